"""The champion's Bento served by a real ``bentoml serve``: predictions, field-level errors for
bad requests, and a service that stays up after them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest

import loopline
from loopline.data.feature_store import FeatureStore
from loopline.state import state_paths
from tests.conftest import source_records
from tests.servers import serve_bento

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(demo_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, result = demo_pipeline
    assert result.bento_tag is not None
    with serve_bento(result.bento_tag, tmp_path_factory.mktemp("bentoml")) as url:
        yield url


@pytest.fixture(scope="module")
def records(demo_pipeline, demo_csv: Path) -> list[dict[str, object]]:
    """Raw records of the source (the columns the features read), with the true label as
    ``expected`` (taken out before sending).
    """
    return [{**{k: v for k, v in record.items() if k != "malignant"},
             "expected": record["malignant"]}
            for record in source_records(demo_csv, "tumor-malignancy", 20, extra=("malignant",))]


def raw(record: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k != "expected"}


def test_predicts_real_records(served: str, records: list[dict[str, object]]) -> None:
    from loopline.release.registry import ModelRegistry

    # The service follows the registry: it answers with the champion of the moment (another
    # module may have promoted a later version of the demo model since the Bento was built).
    champion = ModelRegistry().champion("tumor-malignancy")
    assert champion is not None
    correct = 0
    for index, record in enumerate(records):
        expected = record.pop("expected")
        answer = httpx.post(f"{served}/predict", json={**record, "request_id": f"r{index}"},
                            timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["prediction"] in (0, 1)
        assert 0.5 <= body["probability"] <= 1.0
        assert body["model_name"] == "tumor-malignancy"
        assert body["model_version"] == champion.version
        assert body["variant"] == "champion"
        assert body["request_id"] == f"r{index}"
        assert body["timestamp"]
        correct += body["prediction"] == expected
    assert correct >= 0.8 * len(records)


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"mean_radius": "13.1"}, "mean_radius", "float_type"),
        # The spec's data checks: mean_radius lies in [0, 50] and is never null.
        ({"mean_radius": 50.5}, "mean_radius", "less_than_equal"),
        ({"mean_radius": None}, "mean_radius", "float_type"),
        ({"surprise": 1}, "surprise", "extra_forbidden"),
        # A computed feature is not a source column: the service computes it.
        ({"is_large": 1}, "is_large", "extra_forbidden"),
    ],
)
def test_bad_requests_get_field_level_details_and_the_service_stays_up(
    served: str, records: list[dict[str, object]], change: dict[str, object], field: str,
    error_type: str,
) -> None:
    record = raw(records[0])
    answer = httpx.post(f"{served}/predict", json={**record, **change}, timeout=10)
    assert answer.status_code == 400
    details = answer.json()["detail"]
    assert any(d["loc"][-1] == field and d["type"] == error_type for d in details), details
    assert httpx.post(f"{served}/predict", json=record, timeout=10).status_code == 200


def test_missing_field_and_non_finite_numbers_are_rejected(
    served: str, records: list[dict[str, object]]
) -> None:
    record = {k: v for k, v in records[0].items() if k not in ("expected", "mean_texture")}
    answer = httpx.post(f"{served}/predict", json=record, timeout=10)
    assert answer.status_code == 400
    assert any(d["loc"][-1] == "mean_texture" and d["type"] == "missing"
               for d in answer.json()["detail"])
    record = {k: v for k, v in records[0].items() if k != "expected"}
    record["mean_texture"] = "INFINITE"
    # 1e999 is valid JSON that parses to infinity: it must be refused, not scored.
    body = json.dumps(record).replace('"INFINITE"', "1e999")
    answer = httpx.post(f"{served}/predict", content=body,
                        headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == 400, answer.text


def test_a_null_where_the_source_allows_one_is_scored(
    served: str, records: list[dict[str, object]]
) -> None:
    # worst_area may be missing in the source (completeness 0.99): its feature is null and the
    # model fills it in, as it does for the feature set's rows.
    answer = httpx.post(f"{served}/predict", json={**raw(records[0]), "worst_area": None},
                        timeout=10)
    assert answer.status_code == 200, answer.text


def test_raw_batches_and_feature_values_get_the_answers_of_raw_records(
    served: str, records: list[dict[str, object]], demo_csv: Path
) -> None:
    """``/predict/batch`` takes raw records; ``/predict/features`` and its batch form take the
    features the service would compute (here: the feature set's rows of the same patients).
    """
    singles = [httpx.post(f"{served}/predict", json=raw(record), timeout=10).json()["prediction"]
               for record in records]
    batch = httpx.post(f"{served}/predict/batch",
                       json={"records": [raw(record) for record in records]}, timeout=30)
    assert batch.status_code == 200, batch.text
    assert [answer["prediction"] for answer in batch.json()["predictions"]] == singles
    store = FeatureStore(state_paths().features)
    manifest = store.manifest("tumor-malignancy", 1)
    patients = pl.read_csv(demo_csv).head(len(records)).select("patient_id")
    rows = patients.join(store.read("tumor-malignancy", 1), on="patient_id", how="left",
                         maintain_order="left")
    features = rows.select(manifest.feature_names).rows(named=True)
    one = [httpx.post(f"{served}/predict/features", json=row, timeout=10) for row in features]
    assert all(answer.status_code == 200 for answer in one), one[0].text
    assert [answer.json()["prediction"] for answer in one] == singles
    many = httpx.post(f"{served}/predict/features/batch", json={"records": features}, timeout=30)
    assert [answer["prediction"] for answer in many.json()["predictions"]] == singles
    # Each path takes its own schema: a raw record is not feature values.
    assert httpx.post(f"{served}/predict/features", json=raw(records[0]),
                      timeout=10).status_code == 400


def test_bento_is_self_contained(demo_pipeline) -> None:
    _, result = demo_pipeline
    name, version = result.bento_tag.split(":")
    src = Path(state_paths().bentoml) / "bentos" / name / version / "src"
    config = json.loads((src / "loopline_bento.json").read_text())
    assert config["champion"]["version"] == 1 and config["challenger"] is None
    assert "mean_radius" in config["feature_names"]
    # The raw record: the source columns the features read, from the feature set v1 they were
    # trained on.
    assert config["champion"]["feature_set_version"] == 1
    assert {column["name"] for column in config["inputs"]} >= {"mean_area", "mean_perimeter",
                                                               "worst_radius", "mean_radius"}
    assert "area_per_perimeter" not in {column["name"] for column in config["inputs"]}
    # The service only wires: the Bento must carry every core module it (and they) import.
    package = Path(loopline.__file__).parent
    shipped = {path.relative_to(src / "loopline") for path in (src / "loopline").rglob("*.py")}
    assert {path.relative_to(package) for path in package.rglob("*.py")} <= shipped
    assert {Path("serving/responder.py"), Path("serving/auth.py"), Path("serving/answers.py"),
            Path("serving/live_updates.py"), Path("serving/ab/analysis.py")} <= shipped


def test_without_auth_the_admin_endpoint_answers_loopback_only(
        served: str, records: list[dict[str, object]]) -> None:
    """The demo's Bento has no ``serving.auth``: ``/admin/routing`` answers this (loopback)
    client, and refuses a client elsewhere (uvicorn takes the client from ``X-Forwarded-For``
    when a loopback proxy sends it).
    """
    unchanged = {"challenger_share": 0.0, "reason": "loopback check"}
    here = httpx.post(f"{served}/admin/routing", json=unchanged, timeout=30)
    assert here.status_code == 200, here.text
    elsewhere = httpx.post(f"{served}/admin/routing", json=unchanged, timeout=30,
                           headers={"X-Forwarded-For": "203.0.113.7"})
    assert elsewhere.status_code == 403, elsewhere.text
    assert "loopback" in elsewhere.json()["error"] and "serving.auth" in elsewhere.json()["fix"]
    # Only the admin endpoints: predictions stay open to the same client.
    assert httpx.post(f"{served}/predict", json=raw(records[0]), timeout=30,
                      headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
