"""``data.privacy``'s actions: personal data planted in a source's text columns is found, and with
``hash``, ``mask`` or ``drop`` no planted value reaches the feature store, the prediction log,
MLflow or a Bento, searched byte for byte (parquet files decoded, since their pages are
compressed); ``refuse`` quarantines the batch and names the column; a hashed entity id still
joins; a raw record with a hashed column computes the features the feature set holds.

The property runs in-process (a temporary feature store and prediction log); one pipeline run
covers MLflow, the Bento and a served answer's log record.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.feature_computer import computer_for
from loopline.data.feature_store import FeatureStore
from loopline.data.privacy.keys import hash_key, install_secret_reader, key_id
from loopline.data.privacy.protect import hash_text
from loopline.errors import PersonalDataFound, PrivacyKeyMissing
from loopline.serving.log_privacy import LogProtector, log_protection
from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.privacy import HashKeySource
from loopline.storage import Storage
from tests.conftest import demo_spec_text, write_spec

KEY_ENV = "LOOPLINE_TEST_PRIVACY_KEY"
KEY = "a-test-key-of-thirty-two-chars!!"
ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD")

# --- planted personal data ----------------------------------------------------------------------


def _luhn_completed(body: str) -> str:
    """``body`` with its Luhn check digit appended (a card number the recognizer accepts)."""
    total = 0
    for index, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


emails = st.builds(lambda user, n, domain: f"{user}.{n}@{domain}",
                   st.text("abcdefghijklmnopqrstuvwxyz", min_size=4, max_size=9),
                   st.integers(10, 9999), st.sampled_from(["example.com", "mail.example.org"]))
phones = st.builds(lambda area, exchange, line: f"+1 {area}-{exchange}-{line:04d}",
                   st.sampled_from([212, 312, 415, 617, 206, 303]), st.integers(201, 989),
                   st.integers(0, 9999))
cards = st.builds(lambda body, spaced: (" ".join(re.findall("....", _luhn_completed(body)))
                                        if spaced else _luhn_completed(body)),
                  st.text("0123456789", min_size=14, max_size=14).map(lambda d: "4" + d),
                  st.booleans())
PLANTERS = {"EMAIL_ADDRESS": emails, "PHONE_NUMBER": phones, "CREDIT_CARD": cards}
TEMPLATES = ["reach me at {}", "{}", "note: {} (preferred)", "contact {} after 5pm"]


@st.composite
def sources(draw: st.DrawFn) -> dict[str, Any]:
    """A source with three text columns, each holding one planted entity type in some rows,
    and the action each column gets.
    """
    rows = draw(st.integers(12, 40))
    columns: dict[str, list[str | None]] = {}
    planted: dict[str, list[str]] = {}
    for column, entity in zip(("notes", "contact", "payment"), ENTITIES, strict=True):
        values = draw(st.lists(PLANTERS[entity], min_size=1, max_size=6, unique=True))
        planted[column] = values
        cells: list[str | None] = [draw(st.sampled_from(["n/a", "none", "see file", None]))
                                   for _ in range(rows)]
        places = draw(st.lists(st.integers(0, rows - 1), min_size=len(values),
                               max_size=len(values), unique=True))
        for place, value in zip(places, values, strict=True):
            cells[place] = draw(st.sampled_from(TEMPLATES)).format(value)
        columns[column] = cells
    actions = {column: draw(st.sampled_from(["hash", "mask", "drop"])) for column in columns}
    named = {column: draw(st.booleans()) for column in columns}
    # A column not named gets on_detected: one action for all of them.
    detected = draw(st.sampled_from(["hash", "mask", "drop"]))
    for column in columns:
        if not named[column]:
            actions[column] = detected
    frame = pl.DataFrame({
        "customer": [f"c{i % 7}" for i in range(rows)],
        **columns,
        "amount": [float(i) * 1.5 for i in range(rows)],
        "label": [i % 2 for i in range(rows)],
    })
    return {"frame": frame, "planted": planted, "actions": actions, "named": named,
            "on_detected": detected}


def spec_for(folder: Path, source: Path, actions: dict[str, str], named: dict[str, bool],
             on_detected: str, name: str = "pii-property") -> Spec:
    """A spec reading ``source``: every text column not dropped is a passthrough feature."""
    kept = [column for column, action in actions.items() if action != "drop"]
    columns = {column: action for column, action in actions.items() if named[column]}
    text = f"""
name: {name}
description: planted personal data
data:
  source: {source}
  target: label
  split: {{kind: random, validation: 0.2, test: 0.2, seed: 1}}
  privacy:
    entities: [{", ".join(ENTITIES)}]
    columns: {json.dumps(columns)}
    on_detected: {on_detected}
    hash_key: {{env: {KEY_ENV}}}
features:
  - name: amount_x2
    expr: amount * 2
    dtype: float64
  - passthrough: [customer{"".join(", " + c for c in kept)}]
training:
  task: classification
  metric: {{name: f1, direction: maximize}}
  algorithms:
    - kind: logistic_regression
      params: {{C: 1.0}}
gates:
  thresholds: {{}}
  model_card: {{intended_use: tests, approved: true, approved_by: tests}}
"""
    return load_spec(write_spec(folder, text))


# --- searching byte for byte -----------------------------------------------------------------


def files_under(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        if folder.is_file():
            yield folder
        elif folder.exists():
            yield from (path for path in folder.rglob("*") if path.is_file())


def _decoded(path: Path) -> bytes:
    """A parquet file's values as text (its pages are compressed: raw bytes would hide them)."""
    try:
        table = pq.read_table(path)
    except Exception:
        return b""
    return json.dumps(table.to_pylist(), default=str).encode()


def leaks(values: Iterable[str], *folders: Path) -> list[tuple[str, str]]:
    """Every (file, value) where a value appears in a file under ``folders``: in its bytes, or
    in its decoded values when it is a parquet file.
    """
    needles = sorted({value.encode() for value in values}, key=len, reverse=True)
    pattern = re.compile(b"|".join(re.escape(needle) for needle in needles))
    found = []
    for path in files_under(*folders):
        data = path.read_bytes()
        if path.suffix == ".parquet" or data[:4] == b"PAR1":
            data += _decoded(path)
        found += [(str(path), match.decode()) for match in set(pattern.findall(data))]
    return found


# --- the property, in-process ---------------------------------------------------------------------


@pytest.fixture
def privacy_key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY.encode()


def _materialized(tmp: Path, case: dict[str, Any]) -> tuple[Spec, FeatureStore, Any]:
    source = tmp / "source.parquet"
    case["frame"].write_parquet(source)
    spec = spec_for(tmp, source, case["actions"], case["named"], case["on_detected"])
    store = FeatureStore(tmp / "store")
    record = store.scan_personal_data(spec)
    assert record is not None
    key = hash_key(record.key) if record.hashes else None
    record = record.keyed(None if key is None else key_id(key))
    manifest = store.materialize(spec, privacy=record, key=key)
    return spec, store, manifest


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(case=sources())
def test_planted_personal_data_is_found_and_never_stored_or_logged(
        case: dict[str, Any], privacy_key: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("property")
    spec, store, manifest = _materialized(tmp, case)
    # Detection finds each planted column, with the planted entity type, and acts as planned.
    assert manifest.privacy is not None
    by_column = {c.column: c for c in manifest.privacy.columns}
    for column, entity in zip(("notes", "contact", "payment"), ENTITIES, strict=True):
        assert by_column[column].found and by_column[column].entity_shares.get(entity, 0) > 0
        assert by_column[column].action == case["actions"][column]
    # Served raw records (the source's rows) are computed and logged as the service does.
    recipe = store.recipe(spec, manifest)
    inputs = {column.name: column.dtype for column in recipe.inputs}
    protector = LogProtector(log_protection(spec.data.privacy, [recipe], inputs))
    computer = computer_for(recipe)
    writer = PredictionLogWriter(Storage(str(tmp / "log")), flush_rows=10_000, flush_seconds=3600)
    for row in case["frame"].iter_rows(named=True):
        raw = {name: row[name] for name in inputs}
        features = computer.one(raw)
        writer.append(PredictionRecord(
            request_id=uuid.uuid4().hex, model_name=spec.name, model_version=1, variant="champion",
            prediction=0, features=protector.features(features), inputs=protector.inputs(raw)))
    writer.close()
    planted = [value for values in case["planted"].values() for value in values]
    assert leaks(planted, tmp / "source.parquet"), "the search finds what is there"
    assert leaks(planted, tmp / "store", tmp / "log") == []


# --- refuse, joins, the service's features -----------------------------------------------------------


def test_a_refused_column_quarantines_the_batch_and_names_the_column(
        prefect_harness: None, tmp_path: Path, privacy_key: bytes) -> None:
    from flows.materialize_features import materialize_features

    frame = pl.DataFrame({"remarks": ["call +1 415-555-0132", "fine", "ok", "mail a.b@example.com"],
                          "amount": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]})
    frame.write_parquet(tmp_path / "source.parquet")
    spec = spec_for(tmp_path, tmp_path / "source.parquet", {}, {}, "refuse", name="pii-refused")
    text = (tmp_path / "spec.yaml").read_text().replace("passthrough: [customer]",
                                                        "passthrough: [remarks]")
    with pytest.raises(PersonalDataFound) as caught:
        materialize_features(str(write_spec(tmp_path, text)))
    message = str(caught.value)
    assert "column remarks" in message and "PHONE_NUMBER" in message
    assert "EMAIL_ADDRESS" in message and "25.0%" in message
    assert caught.value.columns == {"remarks": {"PHONE_NUMBER": 0.25, "EMAIL_ADDRESS": 0.25}}
    quarantine = Path(str(caught.value.quarantine_uri))
    assert pl.read_parquet(quarantine / "batch.parquet").height == 4
    report = json.loads((quarantine / "report.json").read_text())
    assert [(c["check"], c["column"], c["passed"]) for c in report["checks"]] == [
        ("personal_data", "remarks", False)]
    assert FeatureStore(Path(os.environ["LOOPLINE_HOME"]) / "features").versions(spec.name) == []


def test_a_hashed_entity_id_still_joins_and_serves_the_stored_features(
        tmp_path: Path, privacy_key: bytes) -> None:
    emails_ = [f"person{i % 5}@example.com" for i in range(20)]
    frame = pl.DataFrame({"email": emails_, "notes": [f"call +1 415-555-01{i:02d}" for i in range(20)],
                          "amount": [float(i) for i in range(20)], "label": [i % 2 for i in range(20)]})
    frame.write_parquet(tmp_path / "source.parquet")
    spec_for(tmp_path, tmp_path / "source.parquet", {"notes": "mask"}, {"notes": True}, "hash")
    text = (tmp_path / "spec.yaml").read_text().replace("passthrough: [customer, notes]",
                                                        "passthrough: [email, notes]")
    spec = load_spec(write_spec(tmp_path, text))
    store = FeatureStore(tmp_path / "store")
    record = store.scan_personal_data(spec)
    assert record is not None and record.protected == {"email": "hash", "notes": "mask"}
    record = record.keyed(key_id(privacy_key))
    manifest = store.materialize(spec, privacy=record, key=privacy_key)
    stored = store.read(spec.name, manifest.version)
    # Same value, same digest: the rows of one person still group and join.
    assert stored["email"].to_list() == [hash_text(e, privacy_key) for e in emails_]
    assert stored["email"].n_unique() == 5
    joined = stored.join(pl.DataFrame({"email": [hash_text("person3@example.com", privacy_key)],
                                       "segment": ["gold"]}), on="email")
    assert joined.height == 4
    # The service's raw record computes exactly the stored features, one by one and as frames.
    computer = computer_for(store.recipe(spec, manifest))
    names = computer.feature_names
    for raw, row in zip(frame.iter_rows(named=True), stored.select(names).iter_rows(named=True),
                        strict=True):
        assert computer.one({n: raw[n] for n in computer.input_names}) == row
    assert computer.frame(frame).equals(stored.select(names))
    assert computer.lazy(frame.lazy(), keep=["label"]).collect().drop("label").equals(
        stored.select(names))
    # The fingerprint follows the actions: masking instead of hashing is a new version.
    respec = load_spec(write_spec(tmp_path, text.replace("on_detected: hash",
                                                         "on_detected: mask")))
    again = store.scan_personal_data(respec)
    assert again is not None
    assert store.materialize(respec, privacy=again).version == manifest.version + 1
    assert store.materialize(spec, privacy=record, key=privacy_key).version == manifest.version


def test_a_missing_or_other_key_is_refused_with_how_to_create_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PrivacyKeyMissing, match=f"{KEY_ENV}, is not set.*secrets.token_urlsafe"):
        hash_key(HashKeySource(secret=None, env=KEY_ENV))
    install_secret_reader(None)
    with pytest.raises(PrivacyKeyMissing, match="no way to read Prefect Secret blocks"):
        hash_key(HashKeySource(secret="loopline-privacy-key"))
    install_secret_reader({"loopline-privacy-key": KEY}.__getitem__)
    try:
        assert hash_key(HashKeySource(secret="loopline-privacy-key")) == KEY.encode()
        with pytest.raises(PrivacyKeyMissing, match=r"Secret.*save\('other'\)"):
            hash_key(HashKeySource(secret="other"))
    finally:
        from tasks.features import read_secret

        install_secret_reader(read_secret)
    monkeypatch.setenv(KEY_ENV, "too-short")
    with pytest.raises(PrivacyKeyMissing, match="fewer than 16"):
        hash_key(HashKeySource(secret=None, env=KEY_ENV))


# --- end to end: the pipeline, a served answer, the state folder searched ---------------------------


def test_the_pipeline_keeps_planted_data_out_of_store_mlflow_bento_and_log(
        prefect_harness: None, demo_csv: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bentoml
    import mlflow

    from flows.pipeline import pipeline
    from loopline.serving.bento_config import CONFIG_FILE, BentoConfig
    from loopline.serving.following import ServedModels
    from loopline.serving.model_calls import ModelCaller, RecordCall
    from loopline.serving.model_inputs import RecordInputs
    from loopline.state import state_paths

    monkeypatch.setenv(KEY_ENV, KEY)
    name = "pii-pipeline"
    demo = pl.read_csv(demo_csv, try_parse_dates=True)
    rows = demo.height
    planted = [f"patient{i}.{uuid.uuid4().hex[:6]}@example.com" for i in range(rows)]
    phones_ = [f"+1 415-{300 + i % 600}-{i:04d}" for i in range(rows)]
    notes = [f"reach me at {phones_[i]}" if i % 3 == 0 else ("stable" if i % 2 else "follow up")
             for i in range(rows)]
    demo.with_columns(pl.Series("email", planted), pl.Series("notes", notes)).write_csv(
        tmp_path / "source.csv")
    text = demo_spec_text(tmp_path / "source.csv", {
        "name: tumor-malignancy": f"name: {name}",
        "entity_id: patient_id": "entity_id: email",
        "    unique: [patient_id]\n": "",
        "  schedule: {cron: \"0 2 * * *\"}": "  schedule: {cron: \"0 2 * * *\"}\n  privacy:\n"
        f"    columns: {{email: hash, notes: mask}}\n    hash_key: {{env: {KEY_ENV}}}",
        "worst_texture]": "worst_texture, notes]",
        "learn_from_production: {enabled: true}": "learn_from_production: {enabled: false}",
    })
    text = re.sub(r"    - kind: lightning_mlp\n(      .*\n)+", "", text)
    result = pipeline(str(write_spec(tmp_path, text)))
    assert result.model_version is not None and result.bento_tag is not None
    # A served answer, logged as the Bento's service logs it (its own configuration).
    bento = bentoml.bentos.get(result.bento_tag)
    config = BentoConfig.model_validate_json(
        Path(bento.path_of("src"), CONFIG_FILE).read_text())
    assert config.privacy is not None and config.warmup_records
    assert all("<PHONE_NUMBER>" in r["notes"] or r["notes"] in ("stable", "follow up")
               for r in config.warmup_records)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{result.model_version}"
                                     ).unwrap_python_model().model
    served = ServedModels(models={"champion": model}, versions={"champion": result.model_version})
    writer = PredictionLogWriter(Storage(config.prediction_log_uri))
    caller = ModelCaller(config, writer)
    for i in range(0, 12, 3):
        record = {column: demo[column][i] for column in config.input_names if column in demo.columns}
        record["notes"] = f"new number {phones_[i + 1]}, mail {planted[i]}"
        caller.one(served, "champion", RecordCall(RecordInputs(record, True, config.input_names),
                                                  uuid.uuid4().hex, "predict"))
    writer.close()
    logged = pl.read_parquet(Path(config.prediction_log_uri) / "predictions")
    assert logged.height == 4
    assert logged["inputs"].struct.field("notes").str.contains("<PHONE_NUMBER>").all()
    paths = state_paths()
    folders = [paths.features / "sets" / name, paths.features / "monitoring", paths.mlflow,
               Path(config.prediction_log_uri), paths.bentoml]
    assert leaks(planted + phones_, tmp_path / "source.csv")
    assert leaks(planted + phones_, *folders) == []
    card = mlflow.MlflowClient().get_model_version(name, str(result.model_version)).tags
    assert any("Personal data" in value and "notes" in value for value in card.values())
