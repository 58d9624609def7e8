"""Signed models: a version is signed when it is registered, and the service and batch scoring
refuse a version whose files do not match its signature (a byte flipped in any file, a file
added or missing) or that carries none, with a clear error, an alert and an audit record, while
the service keeps answering with what it has.

The properties run in-process (MLflow's store, tests/mlflow_store.py; sign once, verify many);
one end-to-end check pushes a tampered version to a real ``bentoml serve`` and to the batch
command.
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from loopline.audit import audit_log
from loopline.errors import MissingCredentials, ModelNotSigned, SignatureInvalid
from loopline.release.lineage import Lineage
from loopline.release.model_card import ModelCard
from loopline.release.records import CHAMPION
from loopline.release.registry import ModelRegistry
from loopline.release.signing import (
    MLFLOW_META,
    SIGNATURE_TAG,
    load_verified_model,
    sign_folder,
    signature_of,
    verified_download,
    verify_folder,
)
from loopline.release.signing_keys import default_key_folder, signing_keys, verifying_keys
from loopline.serving.following import RegistryFollower, ServedModels
from loopline.serving.registry_models import version_loader
from loopline.settings import SIGNING_KEY, SIGNING_KEY_SECRET, SIGNING_PUBLIC_KEY
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel
from loopline.training.tracking import log_model
from tests.mlflow_server import mlflow_pointed_at
from tests.mlflow_store import MlflowStore

#: Examples of the byte-flip property (each verifies the whole model folder in-process).
FLIP_EXAMPLES = 150


def tiny_model() -> TabularModel:
    rng = np.random.default_rng(7)
    train = pl.DataFrame({"height": rng.normal(170, 10, 200), "count": rng.integers(0, 20, 200)})
    prep = TabularPreprocessor.fit(train, ["height", "count"])
    matrix = prep.transform(train)
    target = np.where(matrix[:, 0] + matrix[:, 1] > 0, "yes", "no")
    return TabularModel(task="classification", feature_names=["height", "count"],
                        feature_dtypes={"height": "float64", "count": "int64"}, preprocessor=prep,
                        predictor=SklearnPredictor(LogisticRegression().fit(matrix, target)),
                        classes=["no", "yes"])


def card() -> ModelCard:
    return ModelCard.model_validate({
        "description": "Signed test model.", "intended_use": "Tests.",
        "training_data": "Random rows.", "performance": {"accuracy": 0.9},
        "limitations": "None known.", "ethical_considerations": "None.",
        "approved": True, "approved_by": "reviewer"})


def lineage(run_id: str) -> Lineage:
    return Lineage(data_source="/data/x.csv", data_fingerprint="ab" * 32, feature_set="x",
                   feature_set_version=1, feature_versions={"height": "0f1e"},
                   training_run_id=run_id, code_version=None, spec_hash="cd" * 32)


@dataclass(frozen=True)
class Registered:
    client: MlflowClient
    registry: ModelRegistry
    name: str
    version: int
    model_uri: str
    run_id: str
    files: Path  # a verified local copy of the version's files
    sign_ms: float


@pytest.fixture(scope="module")
def registered(mlflow_store: MlflowStore, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """One loopline model logged and registered (so signed) in the in-process store."""
    client = mlflow_store.client()
    name = f"signed-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name, artifact_location=mlflow_store.artifact_location(name))
    run_id = client.create_run(experiment).info.run_id
    registry = ModelRegistry(client)
    # MLflow resolves a logged model's models:/m-... URI in the process's default store.
    with mlflow_pointed_at(mlflow_store.uri):
        model_uri = log_model(run_id, tiny_model())
        started = time.perf_counter()
        version = registry.register_model(name, model_uri, card(), lineage(run_id),
                                          run_id=run_id).version
        sign_ms = (time.perf_counter() - started) * 1000
        files = verified_download(client, name, version, tmp_path_factory.mktemp("verified"))
    return Registered(client, registry, name, version, model_uri, run_id, files, sign_ms)


@pytest.fixture
def at_store(mlflow_store: MlflowStore) -> Iterator[None]:
    """MLflow pointed at the in-process store for the test."""
    with mlflow_pointed_at(mlflow_store.uri):
        yield


def all_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# --- the byte-flip property, in-process -------------------------------------------------------


def test_registration_signs_the_version_and_its_files_verify(registered: Registered,
                                                            at_store: None) -> None:
    info = registered.registry.get_model(registered.name, version=registered.version)
    assert info.tags[SIGNATURE_TAG].startswith("zlib:")
    assert len(all_files(registered.files)) > 10  # MLmodel, the weights, the code/ copy...
    records = audit_log().records(registered.name, kind="signing.signed")
    assert [record.version for record in records] == [registered.version]
    model = load_verified_model(registered.client, registered.name, registered.version)
    assert isinstance(model.unwrap_python_model().model, TabularModel)


@settings(max_examples=FLIP_EXAMPLES, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_byte_flipped_in_any_file_at_any_offset_is_refused(registered: Registered,
                                                            data: st.DataObject) -> None:
    # MLflow's registered_model_meta is left unsigned on purpose (MLflow writes it into a local
    # artifact store whenever models:/name/version is loaded, so it may be in the copy).
    files = [path for path in all_files(registered.files)
             if path.stat().st_size > 0 and path.name != MLFLOW_META]
    target = data.draw(st.sampled_from(files), label="file")
    content = target.read_bytes()
    offset = data.draw(st.integers(0, len(content) - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="xor")
    signature = signature_of(registered.client, registered.name, registered.version)
    keys = signing_keys(for_signing=False)
    tampered = bytearray(content)
    tampered[offset] ^= mask
    target.write_bytes(bytes(tampered))
    try:
        with pytest.raises(SignatureInvalid, match=r"changed: " + str(
                target.relative_to(registered.files))):
            verify_folder(registered.files, signature, keys, "x v1")
    finally:
        target.write_bytes(content)
    verify_folder(registered.files, signature, keys, "x v1")  # restored: accepted again


def test_an_added_or_missing_file_is_refused(registered: Registered) -> None:
    signature = signature_of(registered.client, registered.name, registered.version)
    keys = signing_keys(for_signing=False)
    extra = registered.files / "code" / ".gitignore"  # model-signing skips .git* by default
    extra.write_text("")
    try:
        with pytest.raises(SignatureInvalid, match=r"added: code/.gitignore"):
            verify_folder(registered.files, signature, keys, "x v1")
    finally:
        extra.unlink()
    gone = next(path for path in all_files(registered.files) if path.name == "MLmodel")
    kept = gone.read_bytes()
    gone.unlink()
    try:
        with pytest.raises(SignatureInvalid, match=r"missing: MLmodel"):
            verify_folder(registered.files, signature, keys, "x v1")
    finally:
        gone.write_bytes(kept)


def test_tampering_with_the_stored_artifacts_is_refused_by_every_loader(
        registered: Registered, mlflow_store: MlflowStore, tmp_path: Path, at_store: None) -> None:
    """A new version whose own copy of the files is changed in the artifact store after it was
    registered: the service's loader and batch scoring's refuse it.
    """
    source = Path(download_artifacts(artifact_uri=registered.model_uri, dst_path=str(tmp_path / "src"),
                                     tracking_uri=mlflow_store.uri))
    version = registered.registry.register_model(registered.name, str(source), card(),
                                                 lineage(registered.run_id)).version
    weights = next(path for path in all_files(source) if path.suffix == ".pkl")
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0x01
    weights.write_bytes(bytes(content))
    with pytest.raises(SignatureInvalid, match=f"{registered.name} v{version} does not match"):
        version_loader(mlflow_store.uri, registered.name)(version)
    from tasks.signing import load_for_batch

    with pytest.raises(SignatureInvalid, match=r"changed: artifacts/"):
        load_for_batch(registered.client, registered.name, version, actor="test")
    refused = audit_log().records(registered.name, kind="signing.refused")
    assert refused[-1].version == version and refused[-1].details["error"] == "SignatureInvalid"


def test_an_unsigned_version_is_refused(registered: Registered, mlflow_store: MlflowStore,
                                        at_store: None) -> None:
    unsigned = registered.client.create_model_version(registered.name, registered.model_uri,
                                                      run_id=registered.run_id)
    with pytest.raises(ModelNotSigned, match="is not signed"):
        version_loader(mlflow_store.uri, registered.name)(int(unsigned.version))
    from tasks.signing import load_for_batch

    with pytest.raises(ModelNotSigned):
        load_for_batch(registered.client, registered.name, int(unsigned.version), actor="test")


def private_key_file(path: Path) -> Path:
    """A new EC P-256 private key written to ``path`` (PEM)."""
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def test_a_signature_made_with_another_key_is_refused(registered: Registered,
                                                      tmp_path: Path) -> None:
    other = private_key_file(tmp_path / "other.pem")
    signature = sign_folder(registered.files, signing_keys({SIGNING_KEY: str(other)}))
    with pytest.raises(SignatureInvalid, match="Key mismatch"):
        verify_folder(registered.files, signature, signing_keys(for_signing=False), "x v1")
    verify_folder(registered.files, signature, signing_keys({SIGNING_PUBLIC_KEY: str(other)},
                                                            for_signing=False), "x v1")


# --- keys ---------------------------------------------------------------------------------------


def test_the_generated_key_is_private_and_settings_choose_the_key(tmp_path: Path) -> None:
    keys = signing_keys()  # the session's generated pair (made at the first registration)
    private = default_key_folder() / "private.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert signing_keys().public_pem == keys.public_pem  # generated once
    public_only = tmp_path / "public.pem"
    public_only.write_bytes(keys.public_pem)
    verifier = signing_keys({SIGNING_PUBLIC_KEY: str(public_only)}, for_signing=False)
    assert verifier.private_pem is None and verifier.fingerprint == keys.fingerprint
    secret = signing_keys({SIGNING_KEY_SECRET: "signing-key"},
                          read_secret=lambda name: private.read_text())
    assert secret.fingerprint == keys.fingerprint
    with pytest.raises(MissingCredentials, match=SIGNING_KEY_SECRET):
        signing_keys({SIGNING_KEY_SECRET: "signing-key"},
                     read_secret=lambda name: (_ for _ in ()).throw(KeyError(name)))
    with pytest.raises(MissingCredentials, match="cannot be read"):
        signing_keys({SIGNING_KEY: str(tmp_path / "nowhere.pem")})


# --- the service's follower ---------------------------------------------------------------------


class Model:
    feature_names = ("x",)


def test_the_follower_keeps_its_versions_and_audits_a_refusal_and_a_swap() -> None:
    name = f"follow-{uuid.uuid4().hex[:8]}"
    wanted: dict[str, int | None] = {"champion": 2, "challenger": None}
    problems: list[str] = []

    def load(version: int) -> Any:
        if version == 2:
            raise SignatureInvalid(f"{name} v2 does not match its signature")
        return Model()

    follower = RegistryFollower(ServedModels(models={"champion": Model()},  # type: ignore[dict-item]
                                             versions={"champion": 1}),
                                resolve=lambda: wanted, load=load, warm_up=lambda model: None,
                                interval_s=3600, on_problem=problems.append, model_name=name)
    assert not follower.check()
    assert follower.served.versions == {"champion": 1}
    assert "SignatureInvalid" in (follower.status().problem or "") and len(problems) == 1
    follower.check(retry_failed=True)  # the same refusal again: recorded once
    wanted["champion"] = 3
    assert follower.check()
    kinds = [(record.kind, record.version) for record in audit_log().records(name)]
    assert kinds == [("service.refused", 2), ("service.swap", 3)]


# --- end to end: a real service and the batch command -------------------------------------------


@pytest.mark.slow
def test_a_tampered_version_is_refused_by_the_live_service_and_by_batch_scoring(
        prefect_harness: None, demo_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from cli.main import main as loopline_cli
    from flows.pipeline import pipeline
    from loopline.serving.rollout import nudge_services
    from loopline.state import state_paths
    from tests.conftest import logistic_spec_text, source_records, write_spec
    from tests.http_standin import StandIn, webhook_answer
    from tests.servers import TLS, serve_bento

    model = f"signed-e2e-{uuid.uuid4().hex[:6]}"
    folder = tmp_path_factory.mktemp("signed-e2e")
    webhook = StandIn(webhook_answer)
    notifications = f"notifications:\n  - kind: log\n  - kind: webhook\n    url: {webhook.url}/alerts"
    spec = write_spec(folder, logistic_spec_text(demo_csv, model, 1.0,
                                                 {"notifications:\n  - kind: log": notifications}))
    first = pipeline(str(spec))
    assert first.stage == "PRODUCTION" and first.bento_tag
    registry = ModelRegistry()
    champion = registry.champion(model)
    assert champion is not None
    # A new version from a copy of the champion's files, signed at registration, then one byte
    # of its weights changed in the artifact store, behind everyone's back.
    copy = Path(download_artifacts(artifact_uri=champion.uri, dst_path=str(folder / "copy")))
    tampered = registry.register_model(model, str(copy), champion.model_card or card(),
                                       champion.lineage or lineage("run")).version
    weights = next(path for path in all_files(copy) if path.suffix == ".pkl")
    content = bytearray(weights.read_bytes())
    content[100] ^= 0xFF
    weights.write_bytes(bytes(content))
    records = source_records(demo_csv, model, 5)
    try:
        with serve_bento(first.bento_tag, folder) as url:
            registry.client.set_registered_model_alias(model, CHAMPION, str(tampered))
            nudge_services(model, state_paths().serving)
            deadline = time.monotonic() + 60
            while True:
                health = httpx.get(f"{url}/health", timeout=10, verify=TLS).json()
                if health["status"] == "degraded" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert health["status"] == "degraded", health
            assert "SignatureInvalid" in health["follow"]["problem"]
            assert health["versions"]["champion"] == champion.version
            for index, record in enumerate(records):
                answer = httpx.post(f"{url}/predict", json={**record, "request_id": f"s{index}"},
                                    timeout=30, verify=TLS)
                assert answer.status_code == 200
                assert answer.json()["model_version"] == champion.version
            while not webhook.requests and time.monotonic() < deadline:
                time.sleep(0.2)
            assert webhook.requests and webhook.requests[0].body["model"] == model
            refused = audit_log().records(model, kind="service.refused")
            assert refused and refused[-1].version == tampered
        # Batch scoring refuses it too, and writes nothing.
        output = folder / "scored"
        status = loopline_cli(["batch-predict", model, str(demo_csv), str(output),
                               "--version", str(tampered)])
        assert status == 1 and not output.exists()
        assert audit_log().records(model, kind="signing.refused")[-1].version == tampered
    finally:
        registry.client.set_registered_model_alias(model, CHAMPION, str(champion.version))
        webhook.close()


def test_a_service_with_no_key_of_its_own_verifies_with_the_key_its_bento_was_built_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Bento served where no key is configured or generated (a container) verifies with the
    public key carried in its configuration; the machine's own settings win where it has any;
    with neither, it refuses to guess.
    """
    builder = private_key_file(tmp_path / "builder.pem")
    built_with = signing_keys({SIGNING_KEY: str(builder)}).public_pem.decode()
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path / "elsewhere"))  # no generated pair there
    with pytest.raises(MissingCredentials, match="no key to verify model signatures with"):
        verifying_keys(None, environ={})
    assert verifying_keys(built_with, environ={}).public_pem.decode() == built_with
    own = verifying_keys(built_with, environ={SIGNING_KEY: str(private_key_file(tmp_path / "own.pem"))})
    assert own.public_pem.decode() != built_with
