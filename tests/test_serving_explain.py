"""``POST /explain``: the champion's prediction for a raw record and each feature's contribution.

Core tests (no server): :func:`loopline.serving.explaining.explain_request` on a logistic
regression and a gradient-boosted model (contributions plus the base value equal the explained
output, and the explained output is the model's own log-odds), one explainer per served version,
errors as ``/predict``'s; a key without the ``predict`` scope refused as on ``/predict``. Then a
real ``bentoml serve`` of the session's demo Bento (whichever candidate won: tree, linear or the
MLP's background-sample explainer): the same sum over HTTP, and the same 400/413 bodies as
``/predict`` for bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from loopline.errors import InvalidFeatureValue, ModelCallFailed
from loopline.serving.explaining import Explainers, explain_request
from loopline.serving.following import ServedModels
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel
from tests.conftest import source_records
from tests.servers import serve_bento

NAMES = ["a", "b", "c", "colour"]


class Record(BaseModel):
    """A raw record of the in-process models (their features: no recipe)."""

    model_config = ConfigDict(extra="forbid")

    a: float
    b: float
    c: float
    colour: str
    request_id: str | None = None


def fitted_model(kind: str, seed: int = 0) -> TabularModel:
    """A binary classifier on three numbers and a category, trained here."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    rows = 400
    columns: dict[str, Any] = {name: rng.normal(size=rows) for name in NAMES[:3]}
    columns["colour"] = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    logit = 2 * columns["a"] - columns["b"] + (columns["colour"] == "red")
    target = (logit + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    prep = TabularPreprocessor.fit(columns, NAMES)
    estimator = (LogisticRegression() if kind == "linear"
                 else HistGradientBoostingClassifier(max_iter=30, random_state=seed))
    estimator.fit(prep.transform(columns).astype(np.float64), target)
    return TabularModel(task="classification", feature_names=list(NAMES),
                        feature_dtypes={"a": "float64", "b": "float64", "c": "float64",
                                        "colour": "string"},
                        preprocessor=prep, predictor=SklearnPredictor(estimator), classes=[0, 1])


def served(model: TabularModel, version: int = 3) -> ServedModels:
    return ServedModels(models={"champion": model}, versions={"champion": version})


RECORDS = [{"a": 0.3, "b": -1.2, "c": 0.0, "colour": "red"},
           {"a": -2.0, "b": 0.5, "c": 1.5, "colour": "blue"},
           {"a": 0.0, "b": 0.0, "c": 0.0, "colour": "purple"}]  # an unseen category


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_contributions_plus_the_base_are_the_models_log_odds(kind: str) -> None:
    model = fitted_model(kind)
    explainers = Explainers()
    observed: list[tuple[str, str, bool]] = []
    for index, record in enumerate(RECORDS):
        answer = explain_request(Record(**record, request_id=f"r{index}"), served(model),
                                 "m", NAMES, explainers,
                                 observe=lambda e, v, s, f: observed.append((e, v, f)))
        expected = model.predict({name: [record[name]] for name in NAMES})
        assert answer.prediction == expected["prediction"][0]
        assert answer.probability == pytest.approx(float(expected["probability"][0]), abs=1e-12)
        assert (answer.model_version, answer.variant, answer.request_id) == (3, "champion",
                                                                            f"r{index}")
        assert list(answer.contributions) == NAMES
        assert answer.base_value + sum(answer.contributions.values()) == pytest.approx(
            answer.explained_value, abs=1e-6)
        # What is explained is the model's own output: the positive class's log-odds.
        positive = float(model.scores({name: [record[name]] for name in NAMES})[0, 1])
        assert answer.explained_value == pytest.approx(math.log(positive / (1 - positive)),
                                                       abs=1e-6)
        assert answer.explained_class == 1 and "log-odds" in answer.output
        assert answer.method == kind
    assert observed == [("explain", "champion", False)] * len(RECORDS)
    assert explainers.builds == 1


def test_one_explainer_per_served_version_and_a_swapped_out_one_is_forgotten() -> None:
    first, second, third = (fitted_model("linear", seed=seed) for seed in (0, 1, 2))
    built: list[TabularModel] = []

    def build(model: TabularModel) -> Any:
        from loopline.training.explanations import explainer_for

        built.append(model)
        return explainer_for(model)

    explainers = Explainers(build)
    request = Record(**RECORDS[0])
    for _ in range(3):
        explain_request(request, served(first, 1), "m", NAMES, explainers)
    assert built == [first]
    # The champion is explained, whatever else is served; the challenger's explainer is kept.
    both = ServedModels(models={"champion": second, "challenger": first},
                        versions={"champion": 2, "challenger": 1})
    assert explain_request(request, both, "m", NAMES, explainers).model_version == 2
    explain_request(request, served(first, 1), "m", NAMES, explainers)
    assert built == [first, second]
    # A new version alone: the ones no longer served are forgotten (built again if they return).
    explain_request(request, served(third, 3), "m", NAMES, explainers)
    explain_request(request, served(first, 1), "m", NAMES, explainers)
    assert built == [first, second, third, first]
    assert explainers.builds == 4


def test_bad_values_are_the_callers_fault_and_a_failing_explainer_is_a_500() -> None:
    model = fitted_model("linear")
    failures: list[bool] = []
    with pytest.raises(InvalidFeatureValue, match="too far from the training data"):
        explain_request(Record(**{**RECORDS[0], "a": 1e300}), served(model), "m", NAMES,
                        Explainers(), observe=lambda e, v, s, f: failures.append(f))

    class Broken:
        method = "linear"

        def explain(self, columns: Any) -> Any:
            raise RuntimeError("no")

    with pytest.raises(ModelCallFailed, match="RuntimeError: no"):
        explain_request(Record(**RECORDS[0]), served(model), "m", NAMES,
                        Explainers(lambda _: Broken()),  # type: ignore[arg-type,return-value]
                        observe=lambda e, v, s, f: failures.append(f))
    assert failures == [True, True]


# --- batches: concurrent requests explained together, each as alone ---------------------------

def three_class_model() -> TabularModel:
    """A three-class tree model (each row explains its own predicted class)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(5)
    rows = 300
    columns: dict[str, Any] = {name: rng.normal(size=rows) for name in NAMES[:3]}
    columns["colour"] = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    target = np.digitize(columns["a"] + columns["b"], [-0.5, 0.5])
    prep = TabularPreprocessor.fit(columns, NAMES)
    estimator = HistGradientBoostingClassifier(max_iter=20, random_state=0)
    estimator.fit(prep.transform(columns).astype(np.float64), target)
    return TabularModel(task="classification", feature_names=list(NAMES),
                        feature_dtypes={"a": "float64", "b": "float64", "c": "float64",
                                        "colour": "string"},
                        preprocessor=prep, predictor=SklearnPredictor(estimator), classes=[0, 1, 2])


def comparable(answer: Any) -> Any:
    """An answer without its timestamp; an error as its type and message."""
    if isinstance(answer, Exception):
        return (type(answer).__name__, str(answer))
    return answer.model_dump(exclude={"timestamp"})


def counting(explainers_built: list[int]) -> Any:
    """An explainer builder whose explainers count the rows of each explain call."""
    from loopline.training.explanations import explainer_for

    def build(model: TabularModel) -> Any:
        explainer = explainer_for(model)
        explain = explainer.explain

        def counted(columns: Any) -> Any:
            explainers_built.append(len(next(iter(columns.values()))))
            return explain(columns)

        explainer.explain = counted  # type: ignore[method-assign]
        return explainer
    return build


@pytest.mark.parametrize("kind", ["linear", "tree", "three classes"])
def test_a_batch_answers_each_record_as_alone_and_a_bad_one_fails_alone(kind: str) -> None:
    from loopline.serving.explaining import explain_all

    model = three_class_model() if kind == "three classes" else fitted_model(kind)
    bad = {**RECORDS[0], "a": 1e300}  # too far from the training data: a 400 of its own
    records = [*RECORDS, {"a": 1.5, "b": 0.2, "c": -0.7, "colour": "green"}]
    requests = [Record(**record, request_id=f"r{index}") for index, record in enumerate(records)]
    alone = [explain_request(request, served(model), "m", NAMES, Explainers())
             for request in requests]
    calls: list[int] = []
    observed: list[tuple[str, str, bool]] = []
    explainers = Explainers(counting(calls))
    batched = explain_all(requests, served(model), "m", NAMES, explainers,
                          observe=lambda e, v, s, f: observed.append((e, v, f)))
    assert [comparable(answer) for answer in batched] == [comparable(a) for a in alone]
    assert calls == [len(requests)]  # one explain call for the whole batch
    assert observed == [("explain", "champion", False)] * len(requests)
    # A bad record in the batch fails alone; each of the others gets what it gets alone.
    with_bad = [*requests[:2], Record(**bad, request_id="bad"), *requests[2:]]
    observed.clear()
    batched = explain_all(with_bad, served(model), "m", NAMES, explainers,
                          observe=lambda e, v, s, f: observed.append((e, v, f)))
    assert isinstance(batched[2], InvalidFeatureValue)
    with pytest.raises(InvalidFeatureValue) as raised:
        explain_request(with_bad[2], served(model), "m", NAMES, explainers)
    assert str(batched[2]) == str(raised.value)
    assert [comparable(a) for a in batched[:2] + batched[3:]] == [comparable(a) for a in alone]
    assert [failed for _, _, failed in observed] == [False, False, True, False, False]
    assert explainers.builds == 1


def test_concurrent_requests_are_explained_in_one_batch_once_the_explainer_is_built() -> None:
    import asyncio

    from loopline.serving.explaining import ExplainBatching

    model = fitted_model("tree")
    calls: list[int] = []
    explainers = Explainers(counting(calls))
    batching = ExplainBatching(lambda: served(model), "m", NAMES, explainers, max_batch=64,
                               max_latency_s=0.005)
    requests = [Record(**record, request_id=f"r{index}") for index, record in enumerate(RECORDS)]
    bad = Record(**{**RECORDS[0], "a": 1e300}, request_id="bad")

    async def both() -> tuple[Any, list[Any]]:
        # The first request builds the explainer, alone in a thread (not on the event loop).
        first = await batching.explain(requests[0])
        answers = await asyncio.gather(*(batching.explain(r) for r in [*requests, bad]),
                                       return_exceptions=True)
        return first, answers

    try:
        first, answers = asyncio.run(asyncio.wait_for(both(), 60))
    finally:
        batching.close()
    alone = [explain_request(request, served(model), "m", NAMES, Explainers())
             for request in requests]
    assert comparable(first) == comparable(alone[0])
    assert [comparable(a) for a in answers[:-1]] == [comparable(a) for a in alone]
    assert isinstance(answers[-1], InvalidFeatureValue)
    assert (batching.batcher.batches, batching.batcher.items) == (1, len(requests) + 1)
    # One call for the first request; the batch (the bad record in it) fell back to each alone.
    assert calls[0] == 1 and explainers.builds == 1


def test_each_worker_gets_its_share_of_the_cores_for_the_models_threads() -> None:
    from loopline.serving.worker_threads import model_threads

    assert [model_threads(workers, cores=2) for workers in (1, 2, 3)] == [2, 1, 1]
    assert model_threads(2, cores=16) == 8


# --- the scope, as the service's middleware applies it ------------------------------------------

def test_a_key_without_the_predict_scope_is_refused_as_on_predict() -> None:
    from loopline.serving.auth import ApiKeyAuth
    from loopline.spec.sections.access import ApiKeySource, AuthSpec
    from tests.test_serving_scopes import bearer, body, call, http, status

    auth = AuthSpec(keys=[ApiKeySource(env="P", scopes=["predict"]),
                          ApiKeySource(env="F", scopes=["feedback"])])
    middleware = ApiKeyAuth(None, auth=auth, environ={"P": "p-key", "F": "f-key"})
    for key, expected in (("p-key", 200), ("f-key", 403), ("nope", 401)):
        answers = {path: call(middleware, http(path, bearer(key)))[1]
                   for path in ("/explain", "/predict")}
        assert status(answers["/explain"]) == status(answers["/predict"]) == expected
        if expected != 200:
            assert body(answers["/explain"]) == body(answers["/predict"])


# --- a real served Bento: the session's demo pipeline, served by `bentoml serve` ----------------

@pytest.fixture(scope="module")
def url(demo_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, result = demo_pipeline
    assert result.bento_tag is not None
    with serve_bento(result.bento_tag, tmp_path_factory.mktemp("explain-serve")) as base:
        yield base


@pytest.fixture(scope="module")
def records(url: str, demo_csv: Path) -> list[dict[str, Any]]:
    return source_records(demo_csv, "tumor-malignancy", 5)


def post(url: str, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(url + path, content=content, timeout=60,
                      headers={"content-type": "application/json"})


#: The explained output from the positive class's probability, by what the explainer explains.
FROM_PROBABILITY = {"log-odds of 1": lambda p: math.log(p / (1 - p)),
                    "probability of 1": lambda p: p}


@pytest.mark.slow
def test_explain_answers_with_the_predictions_and_contributions_that_sum_up(
        url: str, records: list[dict[str, Any]]) -> None:
    for index, record in enumerate(records):
        explained = post(url, "/explain", {**record, "request_id": f"e{index}"})
        assert explained.status_code == 200, explained.text
        body = explained.json()
        predicted = post(url, "/predict", record).json()
        assert (body["prediction"], body["model_version"]) == (predicted["prediction"],
                                                               predicted["model_version"])
        assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-9)
        assert body["request_id"] == f"e{index}" and body["variant"] == "champion"
        assert body["explained_class"] == 1 and body["output"] in FROM_PROBABILITY
        assert body["method"] in ("tree", "linear", "kernel")
        assert body["base_value"] + sum(body["contributions"].values()) == pytest.approx(
            body["explained_value"], abs=1e-6)
        positive = predicted["probability"] if predicted["prediction"] == 1 \
            else 1 - predicted["probability"]
        assert body["explained_value"] == pytest.approx(
            FROM_PROBABILITY[body["output"]](positive), abs=1e-6)
        # Computed features are explained too: what the model reads, not what the client sent.
        assert {"mean_radius", "area_per_perimeter"} <= set(body["contributions"])


def _bad_bodies(record: dict[str, Any]) -> dict[str, str]:
    missing = {k: v for k, v in record.items() if k != "mean_texture"}
    return {
        "wrong type": json.dumps({**record, "mean_radius": "13.1"}),
        "out of range": json.dumps({**record, "mean_radius": 50.5}),
        "missing field": json.dumps(missing),
        "extra field": json.dumps({**record, "surprise": 1}),
        "NaN": json.dumps({**record, "mean_texture": float("nan")}),
        "infinity": json.dumps({**record, "mean_texture": "INF"}).replace('"INF"', "1e999"),
        "not JSON": "{",
        # Over the default serving.max_body_mb of 16.
        "too large": json.dumps({**record, "padding": "x" * 17_000_000}),
    }


@pytest.mark.slow
def test_bad_input_gets_what_predict_gets_and_the_service_stays_up(
        url: str, records: list[dict[str, Any]]) -> None:
    for what, body in _bad_bodies(records[0]).items():
        explained, predicted = post(url, "/explain", body), post(url, "/predict", body)
        assert explained.status_code == predicted.status_code, (what, explained.text)
        assert explained.status_code == (413 if what == "too large" else 400), (what,
                                                                                explained.text)
        assert explained.json() == predicted.json(), what
    assert post(url, "/explain", records[0]).status_code == 200
