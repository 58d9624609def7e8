"""What a retraining does about the sweep: reuse the champion's configuration
(``retraining.sweep: reuse_best``) or sweep again, and why.

A sweep's best is retrained on train+validation and becomes a candidate; when it is promoted, its
configuration (its candidate and the values it drew for the candidate's ``search`` space) is
recorded as the params of the MLflow run that trained it. With ``reuse_best`` a retraining trains
that configuration on the new data as a sweep's best is trained, with no study and no trials. It
sweeps after all when there is nothing trustworthy to reuse:

- there is no champion;
- the champion's training run cannot be read, or does not name its candidate or a searched
  value;
- the champion was not trained from a sweep's best (a single training run has no searched
  configuration to reuse);
- its candidate is no longer in ``training.algorithms`` (or is now another kind);
- one of its values does not fit the candidate's current search space (the spec changed).

Only the searched hyperparameters are reused: the fixed ``params`` are the spec's as it is now,
as they are in every trial. Without a ``training.sweep`` section there is nothing to reuse and
every candidate trains once. Everything here is a pure function over plain inputs; reading the
registry and MLflow is the caller's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopline.spec.sections.algorithms import Algorithm
from loopline.spec.sections.operations import RetrainingSpec
from loopline.spec.sections.search import (
    ChoiceSearch,
    IntSearch,
    LogUniformSearch,
    SearchDistribution,
    UniformSearch,
)
from loopline.spec.sections.training import TrainingSpec

#: The params that mark a run as a sweep's best retrained (``best_trial``) or as a reuse of one.
SWEEP_BEST_PARAM = "best_trial"
REUSED_FROM_PARAM = "reused_from_version"
#: The param naming the candidate; older best runs name it only in their run name.
CANDIDATE_PARAM = "candidate"
BEST_RUN_PREFIX = "best-"

SweepMode = Literal["reuse_best", "full"]


class ChampionRun(BaseModel):
    """The champion as read from the registry and the MLflow run that trained it.

    Attributes:
        version: the champion's version.
        run_id: its training run (from its lineage); None when it has no lineage.
        run_name: that run's name.
        params: that run's params as MLflow holds them (text values); None when the run could
            not be read.
        read_error: why the run could not be read.
    """

    model_config = ConfigDict(frozen=True)

    version: int
    run_id: str | None = None
    run_name: str = ""
    params: dict[str, str] | None = None
    read_error: str = ""


class SweepPlan(BaseModel):
    """What a training run does about the sweep, and why.

    Attributes:
        action: ``reuse`` (train the champion's configuration: no study, no trials), ``sweep``
            (an Optuna sweep per the spec) or ``train`` (no ``training.sweep``: every candidate
            once).
        reason: why, for the logs and the retraining's outcome.
        champion_version: the version whose configuration is reused.
        source_run_id: the MLflow run that configuration was read from.
        candidate: the reused candidate's name.
        params: the reused values of the candidate's searched hyperparameters.
    """

    model_config = ConfigDict(frozen=True)

    action: Literal["reuse", "sweep", "train"]
    reason: str
    champion_version: int | None = None
    source_run_id: str | None = None
    candidate: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def reuses(self) -> bool:
        """Whether the champion's configuration is trained instead of sweeping."""
        return self.action == "reuse"

    @property
    def note(self) -> str:
        """A short clause for the retraining's outcome, e.g. ``trained with v3's configuration
        (logistic_regression {'C': 0.4}, retraining.sweep: reuse_best)``.
        """
        if self.action == "reuse":
            return (f"trained with v{self.champion_version}'s configuration ({self.candidate} "
                    f"{self.params}, retraining.sweep: reuse_best)")
        if self.action == "sweep":
            return f"swept again: {self.reason}"
        return "each candidate trained once (no training.sweep)"


def decode_param(text: str) -> Any:
    """A param value back from MLflow's text: JSON as loopline logs it (``json.dumps`` of every
    value that is not text), else the text itself.
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def logged_candidate(params: Mapping[str, str], run_name: str) -> str | None:
    """The candidate a run trained: its ``candidate`` param, else the name of a ``best-<name>``
    run; None when neither says.
    """
    if params.get(CANDIDATE_PARAM):
        return params[CANDIDATE_PARAM]
    if run_name.startswith(BEST_RUN_PREFIX) and len(run_name) > len(BEST_RUN_PREFIX):
        return run_name[len(BEST_RUN_PREFIX):]
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python, but a choice of [1, 2] does not hold `true`.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def fits(dist: SearchDistribution, value: Any) -> bool:
    """Whether ``value`` is one the distribution can draw: within a range's bounds (an int range
    on its steps), or one of a choice's values.
    """
    if isinstance(dist, UniformSearch | LogUniformSearch):
        low, high = dist.uniform if isinstance(dist, UniformSearch) else dist.log_uniform
        return _number(value) and low <= value <= high
    if isinstance(dist, IntSearch):
        low, high = dist.int_range
        return (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
                and (value - low) % dist.step == 0)
    assert isinstance(dist, ChoiceSearch)
    return any(_same(value, choice) for choice in dist.choice)


def _describe(dist: SearchDistribution) -> str:
    return json.dumps(dist.model_dump(mode="json", by_alias=True, exclude_defaults=True))


def read_configuration(algorithm: Algorithm, params: Mapping[str, str]
                       ) -> tuple[dict[str, Any], str | None]:
    """The values a run's params give the candidate's searched hyperparameters.

    Returns:
        ``(values, problem)``: ``problem`` is None when every searched hyperparameter was logged,
        is valid and fits its current distribution; else what is wrong with the first that does
        not (and ``values`` holds those read before it).
    """
    params_model = type(algorithm.params)
    values: dict[str, Any] = {}
    for key, dist in algorithm.search.items():
        name = f"{algorithm.candidate_name}.{key}"
        if key not in params:
            return values, f"its run has no param {key!r} (the value of {name} cannot be read)"
        value = decode_param(params[key])
        try:
            params_model.model_validate({key: value})
        except ValidationError as exc:
            return values, (f"its {name} = {value!r} is no longer a valid value "
                            f"({exc.errors()[0]['msg']})")
        if not fits(dist, value):
            return values, (f"its {name} = {value!r} does not fit the current search space "
                            f"{_describe(dist)}")
        values[key] = value
    return values, None


def plan_retraining_sweep(retraining: RetrainingSpec | SweepMode, training: TrainingSpec,
                          champion: ChampionRun | None) -> SweepPlan:
    """Decide what a retraining does about the sweep.

    Args:
        retraining: the spec's ``retraining`` section (or its ``sweep`` mode).
        training: the spec's ``training`` section as it is now.
        champion: the champion and its training run's params; None when there is no champion.

    Returns:
        ``train`` without ``training.sweep``; ``reuse`` with the champion's candidate and values
        when ``reuse_best`` has a configuration that fits the spec; else ``sweep``, with the
        reason the configuration could not be reused.
    """
    mode = retraining if isinstance(retraining, str) else retraining.sweep
    if training.sweep is None:
        return SweepPlan(action="train", reason="the spec has no training.sweep: every "
                                                "candidate trains once, nothing to reuse")
    if mode == "full":
        return SweepPlan(action="sweep", reason="retraining.sweep is `full`")
    if champion is None:
        return SweepPlan(action="sweep", reason="there is no champion whose configuration "
                                                "could be reused")

    def fallback(why: str) -> SweepPlan:
        return SweepPlan(action="sweep", reason=f"champion v{champion.version}'s configuration "
                         f"cannot be reused: {why}", champion_version=champion.version,
                         source_run_id=champion.run_id)

    if champion.run_id is None:
        return fallback("it has no lineage naming its training run")
    if champion.params is None:
        return fallback(f"its training run {champion.run_id} cannot be read "
                        f"({champion.read_error or 'unknown error'})")
    params = champion.params
    if SWEEP_BEST_PARAM not in params and REUSED_FROM_PARAM not in params:
        return fallback(f"its training run {champion.run_id} is not a sweep's best (it trained "
                        "the candidate's fixed params once), so there is no swept configuration")
    candidate = logged_candidate(params, champion.run_name)
    if candidate is None:
        return fallback(f"its training run {champion.run_id} does not name its candidate")
    names = [algorithm.candidate_name for algorithm in training.algorithms]
    if candidate not in names:
        return fallback(f"its candidate {candidate!r} is no longer in training.algorithms "
                        f"({', '.join(names)})")
    algorithm = training.algorithms[names.index(candidate)]
    logged_kind = params.get("algorithm")
    if logged_kind is not None and logged_kind != algorithm.kind:
        return fallback(f"its candidate {candidate!r} was a {logged_kind}, and is a "
                        f"{algorithm.kind} in the spec now")
    values, problem = read_configuration(algorithm, params)
    if problem is not None:
        return fallback(problem)
    return SweepPlan(action="reuse", reason=f"retraining.sweep is `reuse_best`: reusing champion "
                     f"v{champion.version}'s configuration ({candidate} {values})",
                     champion_version=champion.version, source_run_id=champion.run_id,
                     candidate=candidate, params=values)
