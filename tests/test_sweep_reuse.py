"""The rules of ``retraining.sweep``: which configuration a retraining reuses (the champion's
candidate and swept values, read back from its MLflow run's params) and when it sweeps again.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.spec.sections.search import ChoiceSearch, IntSearch, UniformSearch
from loopline.spec.sections.training import TrainingSpec
from loopline.training.experiments import flatten
from loopline.training.sweep.reuse import (
    ChampionRun,
    SweepPlan,
    decode_param,
    fits,
    logged_candidate,
    plan_retraining_sweep,
)

LOGISTIC = {"kind": "logistic_regression", "search": {"C": {"log_uniform": [0.01, 10.0]},
                                                      "max_iter": {"int": [100, 300], "step": 50}}}
BOOSTING = {"kind": "gradient_boosting", "params": {"n_estimators": 10},
            "search": {"max_depth": {"choice": [2, 3, None]}}}


def training(*algorithms: dict[str, Any], sweep: bool = True) -> TrainingSpec:
    return TrainingSpec.model_validate({"metric": {"name": "f1"}, "algorithms": list(algorithms),
                                        "sweep": {"n_trials": 2} if sweep else None})


def logged(kind: str, values: dict[str, Any], candidate: str | None = None,
           origin: dict[str, Any] | None = None) -> dict[str, str]:
    """A run's params as MLflow holds them after loopline logged a sweep's best."""
    params = {"algorithm": kind, **values, "feature_set_version": 3,
              **({"best_trial": 4} if origin is None else origin)}
    if candidate is not None:
        params["candidate"] = candidate
    return flatten(params)


def champion(params: dict[str, str] | None, run_name: str = "best-logistic_regression",
             version: int = 7) -> ChampionRun:
    return ChampionRun(version=version, run_id="run-7", run_name=run_name, params=params)


GOOD = logged("logistic_regression", {"C": 0.37, "max_iter": 200, "class_weight": None},
              "logistic_regression")


def test_reuse_best_reuses_the_champions_candidate_and_swept_values() -> None:
    plan = plan_retraining_sweep("reuse_best", training(BOOSTING, LOGISTIC), champion(GOOD))
    assert plan.action == "reuse" and plan.reuses
    assert (plan.candidate, plan.params) == ("logistic_regression", {"C": 0.37, "max_iter": 200})
    assert (plan.champion_version, plan.source_run_id) == (7, "run-7")
    assert plan.note == ("trained with v7's configuration (logistic_regression {'C': 0.37, "
                         "'max_iter': 200}, retraining.sweep: reuse_best)")


def test_without_a_sweep_section_every_candidate_trains_once_whatever_the_mode() -> None:
    for mode in ("reuse_best", "full"):
        plan = plan_retraining_sweep(mode, training(LOGISTIC, sweep=False), champion(GOOD))
        assert plan.action == "train" and not plan.reuses
        assert plan.note == "each candidate trained once (no training.sweep)"


def test_full_sweeps_again_even_with_a_reusable_champion() -> None:
    plan = plan_retraining_sweep("full", training(LOGISTIC), champion(GOOD))
    assert (plan.action, plan.reason) == ("sweep", "retraining.sweep is `full`")
    assert plan.note == "swept again: retraining.sweep is `full`"


@pytest.mark.parametrize(("run", "why"), [
    (None, "there is no champion whose configuration could be reused"),
    (ChampionRun(version=7), "champion v7's configuration cannot be reused: it has no lineage"),
    (ChampionRun(version=7, run_id="run-7", read_error="no run run-7"),
     "champion v7's configuration cannot be reused: its training run run-7 cannot be read "
     "(no run run-7)"),
    (champion(logged("logistic_regression", {"C": 0.37}, origin={})),
     "its training run run-7 is not a sweep's best"),
    (champion(logged("logistic_regression", {"C": 0.37}), run_name="logistic_regression"),
     "its training run run-7 does not name its candidate"),
    (champion(logged("random_forest", {"max_depth": 2}), run_name="best-random_forest"),
     "its candidate 'random_forest' is no longer in training.algorithms (gradient_boosting, "
     "logistic_regression)"),
    (champion(logged("random_forest", {"C": 0.37, "max_iter": 200}, "logistic_regression")),
     "its candidate 'logistic_regression' was a random_forest, and is a logistic_regression"),
    (champion(logged("logistic_regression", {"C": 0.37})),
     "its run has no param 'max_iter' (the value of logistic_regression.max_iter cannot be read)"),
    (champion(logged("logistic_regression", {"C": 0.37, "max_iter": 225})),
     'its logistic_regression.max_iter = 225 does not fit the current search space '
     '{"int": [100, 300], "step": 50}'),
    (champion(logged("logistic_regression", {"C": 20.0, "max_iter": 200})),
     "its logistic_regression.C = 20.0 does not fit the current search space"),
    (champion(logged("logistic_regression", {"C": -1.0, "max_iter": 200})),
     "its logistic_regression.C = -1.0 is no longer a valid value"),
])
def test_reuse_best_sweeps_again_and_says_why(run: ChampionRun | None, why: str) -> None:
    plan = plan_retraining_sweep("reuse_best", training(BOOSTING, LOGISTIC), run)
    assert plan.action == "sweep" and not plan.reuses and plan.params == {}
    assert why in plan.reason, plan.reason
    assert plan.note == f"swept again: {plan.reason}"


def test_a_reused_configuration_can_be_reused_again_and_old_runs_name_it_by_their_run_name(
) -> None:
    again = logged("logistic_regression", {"C": 0.37, "max_iter": 200}, "logistic_regression",
                   origin={"reused_from_version": 6, "reused_from_run": "run-6"})
    assert plan_retraining_sweep("reuse_best", training(LOGISTIC), champion(again)).reuses
    unnamed = logged("logistic_regression", {"C": 0.37, "max_iter": 200})
    plan = plan_retraining_sweep("reuse_best", training(LOGISTIC), champion(unnamed))
    assert (plan.action, plan.candidate) == ("reuse", "logistic_regression")
    assert logged_candidate({}, "best-") is None
    assert logged_candidate({"candidate": "x"}, "best-y") == "x"


def test_decoding_and_fitting_keep_types_apart() -> None:
    assert decode_param("null") is None and decode_param("balanced") == "balanced"
    assert decode_param("[32, 16]") == [32, 16] and decode_param("0.1") == 0.1
    choice = ChoiceSearch(choice=[1, 2])
    assert fits(choice, 1) and not fits(choice, True) and not fits(choice, 3)
    assert fits(ChoiceSearch(choice=[None, "balanced"]), None)
    steps = IntSearch.model_validate({"int": [1, 10], "step": 3})
    assert [v for v in range(-2, 14) if fits(steps, v)] == [1, 4, 7, 10]
    assert not fits(steps, 4.0) and not fits(UniformSearch(uniform=[0.0, 1.0]), True)


# --- properties: a swept value read back from MLflow is reused exactly when it fits -------------

Space = tuple[dict[str, Any], st.SearchStrategy[Any], st.SearchStrategy[Any]]


@st.composite
def float_space(draw: st.DrawFn, low: float, high: float, log: bool = False) -> Space:
    """A uniform (or log-uniform) range inside ``[low, high]``, values in it, values above it."""
    a = draw(st.floats(low, high, allow_nan=False))
    b = draw(st.floats(a, high, allow_nan=False))
    # A spec's log-uniform bounds are above zero.
    kind = "log_uniform" if a > 0 and (log or draw(st.booleans())) else "uniform"
    outside = [st.floats(0.0, 5.0, exclude_min=True).map(lambda d: b + d).filter(lambda v: v > b)]
    if a > 0:
        outside.append(st.floats(0.0, a, exclude_min=True).map(lambda d: a - d)
                       .filter(lambda v: v < a))
    return {kind: [a, b]}, st.floats(a, b), st.one_of(*outside)


@st.composite
def int_space(draw: st.DrawFn, low: int = 1) -> Space:
    """An int range with a step, values on its steps, values off them or outside it."""
    start, step = draw(st.integers(low, 300)), draw(st.integers(1, 7))
    count = draw(st.integers(0, 20))
    high = start + count * step + draw(st.integers(0, step - 1))
    inside = st.integers(0, count).map(lambda k: start + k * step)
    outside = [st.integers(high + 1, high + 50), st.integers(start - 50, start - 1)]
    if step > 1:
        outside.append(st.tuples(st.integers(0, count - 1 if count else 0),
                                 st.integers(1, step - 1)).map(lambda t: start + t[0] * step + t[1])
                       .filter(lambda v: v <= high))
    return {"int": [start, high], "step": step}, inside, st.one_of(*outside)


@st.composite
def choice_space(draw: st.DrawFn, values: list[Any]) -> Space:
    """A choice of some of ``values``; values in it; the others (or an invalid one)."""
    chosen = draw(st.lists(st.sampled_from(values), min_size=1, unique_by=repr))
    rest = [v for v in values if not any(v == c and type(v) is type(c) for c in chosen)]
    return {"choice": chosen}, st.sampled_from(chosen), st.sampled_from(rest or ["not-a-value"])


#: Searchable hyperparameters of each kind, with the spaces a spec may give them.
SPACES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": lambda: float_space(1e-3, 50.0),
                            "max_iter": lambda: int_space(),
                            "class_weight": lambda: choice_space([None, "balanced"])},
    "gradient_boosting": {"n_estimators": lambda: int_space(),
                          "max_depth": lambda: choice_space([None, 2, 3, 5, 8]),
                          "learning_rate": lambda: float_space(1e-3, 1.0, log=True),
                          "min_samples_leaf": lambda: int_space()},
    "lightning_mlp": {"hidden": lambda: choice_space([[8], [16], [32, 16], [64, 32, 16]]),
                      "dropout": lambda: float_space(0.0, 0.9),
                      "lr": lambda: float_space(1e-5, 0.5, log=True),
                      "batch_size": lambda: int_space()},
}


@st.composite
def swept_champions(draw: st.DrawFn) -> tuple[TrainingSpec, dict[str, Any], str,
                                             dict[str, Any], dict[str, st.SearchStrategy[Any]]]:
    """A spec whose candidates sweep random spaces, and a champion's swept values from them:
    ``(training, values, candidate name, the candidate's fixed params, outside strategies)``.
    """
    kind = draw(st.sampled_from(sorted(SPACES)))
    keys = draw(st.lists(st.sampled_from(sorted(SPACES[kind])), unique=True, min_size=1))
    search, values, outside = {}, {}, {}
    for key in keys:
        dist, inside, out = draw(SPACES[kind][key]())
        search[key], values[key], outside[key] = dist, draw(inside), out
    chosen = {"kind": kind, "name": "chosen", "search": search}
    position = draw(st.integers(0, 1))
    algorithms = [BOOSTING, LOGISTIC]
    algorithms.insert(position, chosen)
    spec = training(*algorithms)
    fixed = spec.algorithms[position].params.model_dump()
    return spec, values, "chosen", fixed, outside


@settings(max_examples=300)
@given(case=swept_champions())
def test_a_champions_swept_values_that_fit_are_reused_exactly(
        case: tuple[TrainingSpec, dict[str, Any], str, dict[str, Any], Any]) -> None:
    spec, values, name, fixed, _ = case
    kind = next(a.kind for a in spec.algorithms if a.candidate_name == name)
    # Logged as the sweep's best is: every hyperparameter, the searched ones as drawn.
    params = logged(kind, {**fixed, **values}, name)
    plan = plan_retraining_sweep("reuse_best", spec, champion(params, run_name=f"best-{name}"))
    assert plan.action == "reuse", plan.reason
    assert plan.candidate == name
    assert plan.params == values
    assert all(type(plan.params[k]) is type(values[k]) for k in values)


@settings(max_examples=300)
@given(case=swept_champions(), data=st.data())
def test_a_champion_value_outside_the_current_space_makes_it_sweep_again(
        case: tuple[TrainingSpec, dict[str, Any], str, dict[str, Any], Any],
        data: st.DataObject) -> None:
    spec, values, name, fixed, outside = case
    kind = next(a.kind for a in spec.algorithms if a.candidate_name == name)
    key = data.draw(st.sampled_from(sorted(values)), label="key")
    changed = {**values, key: data.draw(outside[key], label="outside")}
    plan = plan_retraining_sweep("reuse_best", spec,
                                 champion(logged(kind, {**fixed, **changed}, name)))
    assert plan.action == "sweep" and plan.params == {}
    assert f"its {name}.{key} = " in plan.reason, plan.reason
    assert plan == SweepPlan(action="sweep", reason=plan.reason, champion_version=7,
                             source_run_id="run-7")
