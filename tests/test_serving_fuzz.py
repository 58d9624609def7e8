"""A fuzz run of the served Bento's own OpenAPI (``/docs.json``) with schemathesis: no request to
any endpoint gets a 5xx.

The Bento serves champion v1 and challenger v2 of ``tumor-fuzz`` (two pipeline runs), routed
``ab``, with API-key auth; every generated request carries the key, so it reaches the endpoint's
own code. Each operation is fuzzed with schema-valid requests (positive) and, where it takes a
body, schema-violating ones (negative); only the server-error check runs, because BentoML's own
OpenAPI does not match its behaviour in ways that are not loopline's (the 400 ``detail`` is
declared a string but is pydantic's list; the request body is not marked required). Bodies are
``application/json`` only: the one media type the operations declare, and what the service
takes (BentoML itself answers a ``multipart/form-data`` body without a boundary with a 500 from
its own request parsing, before any loopline code runs).

Found by this fuzz run and fixed: a finite number the schema accepts but the model cannot
hold once standardized (``mean_smoothness: 1e38`` exceeds float32) was a 500; it is now a 400
naming the feature (``test_a_finite_number_too_large_for_the_model_is_a_400_naming_the_feature``).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import DEMO_SERVING, IN_CI, logistic_spec_text, source_records, write_spec
from tests.servers import serve_bento

if IN_CI:
    import schemathesis
else:
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")

from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = [
    pytest.mark.slow,
    # schemathesis's own negative-mode strategies draw from `random` (its code, not ours).
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

MODEL = "tumor-fuzz"
KEY = "fuzz-key-1"
KEYS_ENV = "LOOPLINE_FUZZ_API_KEYS"
HEADERS = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = 200
#: The positive fuzz bounds the request's open-ended numbers to this magnitude, so that most of
#: its requests are on the features' scale and reach the models (beyond it they are 400s: see
#: ``test_a_finite_number_too_large_for_the_model_is_a_400_naming_the_feature``).
FEATURE_BOUND = 1e6
#: Every operation the service's OpenAPI lists: a new endpoint fails
#: ``test_every_operation_is_fuzzed`` until it is added here.
OPERATIONS = [
    ("POST", "/predict"), ("POST", "/predict/ab"), ("POST", "/predict/batch"),
    ("POST", "/predict/features"), ("POST", "/predict/features/batch"), ("POST", "/explain"),
    ("POST", "/feedback"),
    ("POST", "/admin/routing"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/healthz"),
    ("GET", "/livez"), ("GET", "/readyz"),
]
WITH_BODY = {path for method, path in OPERATIONS if method == "POST"}


def spec_text(demo_csv: Path, c: float) -> str:
    serving = (f"serving:\n  routing: {{kind: ab, challenger_share: 0.5}}\n"
               f"  auth: {{api_keys_env: {KEYS_ENV}}}")
    return logistic_spec_text(demo_csv, MODEL, c, {DEMO_SERVING: serving})


@pytest.fixture(scope="module")
def bento(prefect_harness: None, demo_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Bento serving champion v1 and challenger v2, routed ab, with auth."""
    from flows.pipeline import pipeline

    folder = tmp_path_factory.mktemp("fuzz")
    first = pipeline(str(write_spec(folder, spec_text(demo_csv, 1.0), "v1.yaml")))
    assert (first.model_version, first.stage) == (1, "PRODUCTION")
    second = pipeline(str(write_spec(folder, spec_text(demo_csv, 0.01), "v2.yaml")))
    assert (second.model_version, second.stage) == (2, "STAGING")
    assert second.bento_tag is not None
    return second.bento_tag


@pytest.fixture(scope="module")
def url(bento: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_bento(bento, tmp_path_factory.mktemp("fuzz-serve"), env={KEYS_ENV: KEY}) as base:
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["versions"] == {"champion": 1, "challenger": 2}
        assert health["routing"]["kind"] == "ab"
        yield base


@pytest.fixture(scope="module")
def served_schema(url: str) -> dict[str, Any]:
    """The OpenAPI document as the service serves it."""
    answer = httpx.get(f"{url}/docs.json", timeout=10)
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def bounded(document: dict[str, Any], bound: float) -> dict[str, Any]:
    """A copy of the OpenAPI document in which the one-record requests' numbers without bounds
    get ``[-bound, bound]`` (BentoML inlines those schemas in each path and repeats them under
    ``components``: every copy titled ``PredictRequest...`` or ``PredictFeaturesRequest...``
    except the batch wrappers).
    """
    document = copy.deepcopy(document)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            title = str(node.get("title", ""))
            if title.startswith(("PredictRequest", "PredictFeaturesRequest")) \
                    and "properties" in node:
                for prop in node["properties"].values():
                    if prop.get("type") == "number":
                        prop.setdefault("minimum", -bound)
                        prop.setdefault("maximum", bound)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return document


def fuzz(url: str, document: dict[str, Any], method: str, path: str, mode: GenerationMode
         ) -> Counter[int]:
    """Run the server-error check on ``MAX_EXAMPLES`` generated requests; returns the statuses."""
    schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config())
    operation = schema[path][method]
    options: dict[str, Any] = {"generation_mode": mode}
    if path in WITH_BODY:
        options["media_type"] = "application/json"
    statuses: Counter[int] = Counter()

    @settings(max_examples=MAX_EXAMPLES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(case=operation.as_strategy(**options))
    def requests_never_get_a_server_error(case: Any) -> None:
        response = case.call(base_url=url, headers=HEADERS, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error], headers=HEADERS)

    requests_never_get_a_server_error()
    return statuses


def test_every_operation_is_fuzzed(served_schema: dict[str, Any]) -> None:
    served = {(method.upper(), path) for path, item in served_schema["paths"].items()
              for method in item}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_valid_requests_never_get_a_server_error(url: str, served_schema: dict[str, Any],
                                                 method: str, path: str) -> None:
    statuses = fuzz(url, bounded(served_schema, FEATURE_BOUND), method, path, GenerationMode.POSITIVE)
    # The key was accepted and valid requests were answered (not only 400s or 401s).
    assert statuses[200] > 0, statuses


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p in OPERATIONS if p in WITH_BODY],
                         ids=[f"{m} {p}" for m, p in OPERATIONS if p in WITH_BODY])
def test_invalid_requests_never_get_a_server_error(url: str, served_schema: dict[str, Any],
                                                   method: str, path: str) -> None:
    statuses = fuzz(url, served_schema, method, path, GenerationMode.NEGATIVE)
    assert statuses[400] > 0 and 401 not in statuses, statuses


@pytest.mark.parametrize("path", ["/predict", "/predict/ab", "/predict/batch", "/predict/features",
                                  "/predict/features/batch"])
def test_a_finite_number_too_large_for_the_model_is_a_400_naming_the_feature(
    url: str, path: str, demo_csv: Path,
) -> None:
    """Found by this fuzz run: 1e38 passes the schema (finite) but, standardized, exceeds float32."""
    from loopline.data.feature_store import FeatureStore
    from loopline.state import state_paths

    if path.startswith("/predict/features"):
        store = FeatureStore(state_paths().features)
        names = store.manifest(MODEL, 1).feature_names
        row = store.read(MODEL, 1).row(0, named=True)
        record = {name: row[name] for name in names}
    else:
        [record] = source_records(demo_csv, MODEL, 1)
    record |= {"mean_smoothness": 1e38}
    body = {"records": [record]} if path.endswith("/batch") else record
    answer = httpx.post(f"{url}{path}", json=body, headers=HEADERS, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "mean_smoothness" in answer.text and "float32" in answer.text
