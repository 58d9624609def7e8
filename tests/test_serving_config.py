"""What a Bento reads at start-up and checks per request, without a server: API keys from the
environment and from a real Prefect Secret block, and the request schema's bounds.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loopline.errors import InvalidFeatureValue, MissingCredentials
from loopline.serving.auth import api_keys
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.requests import features_request_model
from loopline.spec.sections.access import AuthSpec
from loopline.training.modeling.preprocess import TabularPreprocessor


def test_keys_come_from_the_environment_variable_comma_separated() -> None:
    auth = AuthSpec(api_keys_env="KEYS")
    assert api_keys(auth, {"KEYS": " a , b,,"}) == {"a", "b"}


def test_keys_come_from_a_prefect_secret_block(prefect_harness: None) -> None:
    from prefect.blocks.system import Secret

    from tasks.features import read_secret

    Secret(value="s1,s2").save("serving-keys", overwrite=True)
    Secret(value=["l1", "l2"]).save("serving-key-list", overwrite=True)
    assert api_keys(AuthSpec(api_keys_secret="serving-keys"), {}, read_secret) == {"s1", "s2"}

    def read_value(name: str) -> object:
        return Secret.load(name).get()  # type: ignore[union-attr]

    assert api_keys(AuthSpec(api_keys_secret="serving-key-list"), {}, read_value) == {"l1", "l2"}
    both = AuthSpec(api_keys_secret="serving-keys", api_keys_env="KEYS")
    assert api_keys(both, {"KEYS": "e1"}, read_secret) == {"s1", "s2", "e1"}


def test_auth_without_any_key_refuses_to_start_open() -> None:
    with pytest.raises(MissingCredentials, match="no API key was found"):
        api_keys(AuthSpec(api_keys_env="UNSET"), {})


def config() -> BentoConfig:
    return BentoConfig(
        model_name="m", champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
        task="classification", feature_names=["x", "n", "flag", "city"],
        feature_dtypes={"x": "float64", "n": "int8", "flag": "bool", "city": "string"},
        feature_ranges={"x": (0.0, 50.0)}, entity_id="customer_id", live_state="r.sqlite",
        prediction_log_uri="log")


def test_the_request_schema_is_strict_and_bounded() -> None:
    model = features_request_model(config())
    good = {"x": 1.5, "n": -3, "flag": True, "city": "Oslo"}
    assert model.model_validate({**good, "customer_id": 7, "request_id": "r1"})
    for bad in ({"x": "1.5"}, {"x": 51.0}, {"x": float("nan")}, {"n": 128}, {"n": 1.0},
                {"flag": 1}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            model.model_validate({**good, **bad})
    with pytest.raises(ValidationError):
        model.model_validate({k: v for k, v in good.items() if k != "x"})


def test_a_number_beyond_float32_once_standardized_is_the_requests_fault() -> None:
    prep = TabularPreprocessor.fit({"x": [0.1, 0.2, 0.3]}, ["x"])
    assert prep.transform({"x": [0.25]}).shape == (1, 1)
    with pytest.raises(InvalidFeatureValue, match=r"x: 1e\+38 is too far") as caught:
        prep.transform({"x": [0.2, 1e38]})
    assert caught.value.http_status == 400
