"""The service's raw records, without a server: each served model computes its own features from
the record with its recipe, feature values keep their own path, a record a feature cannot be
computed from is the request's fault (400, naming the feature and its column), and a version
whose features read a column the service's requests do not carry is never swapped in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from loopline.data.feature_computer import computer_for
from loopline.data.feature_recipe import FeatureRecipe, RecipeFeature, build_recipe
from loopline.errors import InvalidFeatureValue
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.following import ServedModels
from loopline.serving.live_state import SqliteLiveStateStore, Variant
from loopline.serving.model_inputs import merged_inputs
from loopline.serving.prediction_log import PredictionLogWriter, read_predictions
from loopline.serving.requests import (
    batch_request_model,
    features_request_model,
    raw_request_model,
)
from loopline.serving.responder import Responder
from loopline.serving.rollout import initial_state
from loopline.serving.routing import Router
from loopline.spec.sections.data import DataValidation
from loopline.spec.sections.release import ABRouting, Routing, ShadowRouting
from loopline.storage import Storage
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

SOURCE = {"a": "float64", "b": "int64", "city": "string", "unused": "float64"}
CITIES = ["Oslo", "Lima", "Pune"]


def recipe(ratio_offset: int = 1, extra: list[RecipeFeature] | None = None) -> FeatureRecipe:
    features = [
        RecipeFeature(name="ratio", kind="computed", expr=f"a / (b + {ratio_offset})",
                      dtype="float64"),
        RecipeFeature(name="b8", kind="computed", expr="b", dtype="int8"),
        RecipeFeature(name="city", kind="passthrough", expr="city", dtype="string"),
        *(extra or []),
    ]
    return build_recipe("shop", ratio_offset, features, SOURCE,
                        DataValidation(ranges={"a": [-100.0, 100.0]}, completeness={"b": 1.0}))


def source_rows(rows: int = 200, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"a": rng.normal(0, 10, rows), "b": rng.integers(0, 100, rows),
                         "city": np.asarray(CITIES)[rng.integers(0, 3, rows)].tolist(),
                         "unused": rng.normal(0, 1, rows)})


def trained(model_recipe: FeatureRecipe) -> TabularModel:
    """A logistic regression on the recipe's features of the source rows."""
    features = computer_for(model_recipe).frame(source_rows())
    names = model_recipe.feature_names
    prep = TabularPreprocessor.fit(features, names)
    matrix = prep.transform(features)
    estimator = LogisticRegression().fit(matrix, np.where(matrix[:, 0] > 0, "yes", "no"))
    return TabularModel(task="classification", feature_names=names,
                        feature_dtypes=model_recipe.feature_dtypes, preprocessor=prep,
                        predictor=SklearnPredictor(estimator), classes=["no", "yes"],
                        recipe=model_recipe)


CHAMPION = trained(recipe())
CHALLENGER = trained(recipe(ratio_offset=2))


def raw(index: int, **changes: Any) -> dict[str, Any]:
    row = source_rows(rows=1, seed=index).row(0, named=True)
    return {"a": row["a"], "b": row["b"], "city": row["city"], **changes}


class Service:
    """A responder serving a champion (and a challenger) with the service's real parts."""

    def __init__(self, folder: Path, challenger: TabularModel | None = None,
                 routing: Routing | None = None) -> None:
        models: dict[Variant, TabularModel] = {"champion": CHAMPION}
        versions: dict[Variant, int] = {"champion": 1}
        if challenger is not None:
            models["challenger"], versions["challenger"] = challenger, 2
        routing = routing or ABRouting(kind="ab", challenger_share=0.0)
        self.config = BentoConfig(
            model_name="shop", champion=ServedVersion(version=1, bentoml_model_tag="shop:1"),
            task="classification", feature_names=CHAMPION.feature_names,
            feature_dtypes=CHAMPION.feature_dtypes, routing=routing,
            inputs=merged_inputs([model.inputs for model in models.values()]),
            live_state=str(folder / "routing.sqlite"), prediction_log_uri=str(folder / "log"))
        store = SqliteLiveStateStore(self.config.live_state, "shop")
        store.initialize(initial_state(routing, challenger is not None))
        self.folder = folder
        self.log = PredictionLogWriter(Storage(self.config.prediction_log_uri),
                                       flush_rows=10_000, flush_seconds=600)
        snapshot = ServedModels(models=models, versions=versions)
        self.responder = Responder(self.config, lambda: snapshot, Router(store, None, seed=0),
                                   self.log, warmup_records=[raw(0)])

    def raw_request(self, **fields: Any) -> Any:
        return raw_request_model(self.config).model_validate(fields)

    def logged(self) -> pl.DataFrame:
        self.log.close()
        return read_predictions(Storage(str(self.folder / "log")))


def no_inputs(logged: dict[str, Any] | None) -> bool:
    """Whether a logged answer carries no raw record (the features path)."""
    return logged is None or all(value is None for value in logged.values())


def expected(model: TabularModel, record: dict[str, Any]) -> Any:
    features = computer_for(model.inputs).one(record)
    return model.predict({name: [value] for name, value in features.items()})["prediction"][0]


def test_a_raw_record_is_answered_with_the_features_the_recipe_computes(tmp_path: Path) -> None:
    service = Service(tmp_path)
    records = [raw(index) for index in range(1, 21)]
    answers = [service.responder.predict(service.raw_request(**record, request_id=f"r{index}"))
               for index, record in enumerate(records)]
    assert [answer.prediction for answer in answers] == [expected(CHAMPION, r) for r in records]
    assert {answer.prediction for answer in answers} == {"yes", "no"}
    frame = service.logged().sort("request_id")
    first = frame.filter(pl.col("request_id") == "r0").row(0, named=True)
    assert first["inputs"] == records[0]
    assert first["features"] == {"ratio": records[0]["a"] / (records[0]["b"] + 1),
                                 "b8": records[0]["b"], "city": records[0]["city"]}


def test_feature_values_keep_their_own_path_and_get_the_same_answer(tmp_path: Path) -> None:
    service = Service(tmp_path)
    record = raw(3)
    features = computer_for(CHAMPION.inputs).one(record)
    request = features_request_model(service.config).model_validate(
        {**features, "request_id": "f1"})
    answer = service.responder.predict(request, raw=False)
    assert answer.prediction == expected(CHAMPION, record)
    logged = service.logged().row(0, named=True)
    assert logged["features"] == features
    assert no_inputs(logged["inputs"])
    with pytest.raises(ValidationError):  # the features path takes features, not the raw record
        features_request_model(service.config).model_validate(record)


def test_a_record_a_feature_cannot_be_computed_from_is_a_400_naming_it(tmp_path: Path) -> None:
    service = Service(tmp_path)
    # b = 1000 is a valid int64 source value, but the feature b8 casts it strictly to int8.
    request = service.raw_request(**raw(1, b=1000))
    batch = batch_request_model(service.config, raw_request_model(service.config))
    calls = [lambda: service.responder.predict(request),
             lambda: service.responder.predict_ab(request),
             lambda: service.responder.predict_batch(batch.model_validate(
                 {"records": [raw(2), raw(1, b=1000)]}))]
    for call in calls:
        with pytest.raises(InvalidFeatureValue, match=r"feature b8 \(`b` as int8, reading b\)") \
                as caught:
            call()
        assert caught.value.http_status == 400
    assert service.responder.predict(service.raw_request(**raw(1))).prediction in ("yes", "no")
    assert service.logged().height == 1


def test_champion_and_challenger_each_compute_their_own_features(tmp_path: Path) -> None:
    # Under shadow routing both answer the same record: the champion for the client, the
    # challenger (trained on another feature set version: a / (b + 2)) in the log.
    service = Service(tmp_path, challenger=CHALLENGER, routing=ShadowRouting(kind="shadow"))
    record = raw(5)
    answer = service.responder.predict(service.raw_request(**record, request_id="s"))
    assert (answer.variant, answer.prediction) == ("champion", expected(CHAMPION, record))
    logged = {row["variant"]: row for row in service.logged().iter_rows(named=True)}
    assert logged["champion"]["features"]["ratio"] == record["a"] / (record["b"] + 1)
    assert logged["challenger"]["features"]["ratio"] == record["a"] / (record["b"] + 2)
    assert logged["challenger"]["prediction"] == expected(CHALLENGER, record)
    # Under A/B routing the challenger answers with its own features too.
    routed = Service(tmp_path / "ab", challenger=CHALLENGER,
                     routing=ABRouting(kind="ab", challenger_share=1.0))
    answer = routed.responder.predict_ab(routed.raw_request(**record, request_id="ab"))
    assert (answer.variant, answer.prediction) == ("challenger", expected(CHALLENGER, record))


def test_a_raw_batch_is_answered_as_its_records_one_by_one(tmp_path: Path) -> None:
    service = Service(tmp_path)
    records = [raw(index) for index in range(30)]
    batch = batch_request_model(service.config, raw_request_model(service.config))
    answers = service.responder.predict_batch(batch.model_validate({"records": records}))
    assert [a.prediction for a in answers.predictions] == [expected(CHAMPION, r) for r in records]
    assert service.logged()["inputs"].to_list() == records


def test_a_version_reading_a_column_requests_do_not_carry_is_never_warmed_up(
    tmp_path: Path,
) -> None:
    service = Service(tmp_path)
    service.responder.warm_up(CHALLENGER)  # reads a, b and city: served as they are
    wider = trained(recipe(extra=[RecipeFeature(name="u", kind="computed", expr="unused * 2",
                                                dtype="float64")]))
    with pytest.raises(ValueError, match="read the column unused, which this service's requests"):
        service.responder.warm_up(wider)


def test_a_version_with_other_features_warms_up_on_a_raw_record_after_feature_values(
    tmp_path: Path,
) -> None:
    """The latest request sent feature values (the champion's): a version trained on another
    feature set version warms up on a raw record instead (the Bento's samples, then the latest
    raw record answered), which it computes its own features from.
    """
    service = Service(tmp_path)
    features = computer_for(CHAMPION.inputs).one(raw(4))
    service.responder.predict(features_request_model(service.config).model_validate(features),
                              raw=False)
    other = trained(recipe(extra=[RecipeFeature(name="a2", kind="computed", expr="a * 2",
                                                dtype="float64")]))
    service.responder.warm_up(other)
    service.responder.warmup_records.clear()
    with pytest.raises(InvalidFeatureValue, match=r"needs the features \['a2'\]"):
        service.responder.warm_up(other)  # only feature values to warm up with: not its own
    service.responder.predict(service.raw_request(**raw(5)))
    service.responder.warm_up(other)


def test_the_raw_schema_is_the_columns_the_features_read_typed_bounded_and_strict(
    tmp_path: Path,
) -> None:
    model = raw_request_model(Service(tmp_path).config)
    assert set(model.model_json_schema()["properties"]) == {"a", "b", "city", "request_id"}
    model.model_validate(raw(1, a=None))  # nullable: the spec does not ask a to be complete
    refusals = [raw(1, b=None),  # completeness 1: never null
                raw(1, a=100.5),  # outside data.validation.ranges
                raw(1, a="5.1"), raw(1, a=float("nan")), raw(1, extra=1),
                {key: value for key, value in raw(1).items() if key != "city"}]
    for refused in refusals:
        with pytest.raises(ValidationError):
            model.model_validate(refused)


def test_merged_inputs_take_every_column_once_and_refuse_two_dtypes() -> None:
    wider = recipe(extra=[RecipeFeature(name="u", kind="computed", expr="unused * 2",
                                        dtype="float64")])
    merged = merged_inputs([recipe(), wider])
    assert [column.name for column in merged] == ["a", "b", "city", "unused"]
    other = build_recipe("shop", 3, [RecipeFeature(name="x", kind="computed", expr="a * 2",
                                                   dtype="float64")], {"a": "int64"}, None)
    with pytest.raises(ValueError, match="column a is read as float64 by one version and as int64"):
        merged_inputs([recipe(), other])
