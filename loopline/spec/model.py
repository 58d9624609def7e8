"""The loopline spec: one YAML document declaring a model's whole life.

The sections live in :mod:`loopline.spec.sections`; this module assembles them into :class:`Spec` and
holds the checks that span sections (a time split needs an event-time column, gate metrics must
suit the task...). Parse files with :func:`loopline.spec.loader.load_spec`, which reports every
problem at once with its path and line.

Sections that later parts of the engine act on (``sweep``, ``serving`` beyond ``single``,
``monitoring``, ``retraining``, ``notifications``) are validated today so specs written now keep
working; ``docs/spec.md`` says which parts run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import Field, model_validator

from loopline.errors import InvalidSpec, SpecProblem
from loopline.naming import REQUEST_ID
from loopline.spec.monitoring_problems import monitoring_problems
from loopline.spec.responsible_problems import responsible_problems
from loopline.spec.sections.algorithms import search_space_problems
from loopline.spec.sections.base import NAME_PATTERN, StrictModel
from loopline.spec.sections.data import ComputedFeature, DataSpec, FeatureEntry, PassthroughFeatures
from loopline.spec.sections.gates import GatesSpec
from loopline.spec.sections.operations import LogChannel, MonitoringSpec, Notification, RetrainingSpec
from loopline.spec.sections.passthrough import RenamedColumn
from loopline.spec.sections.release import ABRouting, CanaryRouting, ServingSpec
from loopline.spec.sections.search import LogUniformSearch, UniformSearch
from loopline.spec.sections.training import COST_OBJECTIVES, TrainingSpec, metrics_for

#: Written into JSON Schema so editors know which document this is.
SCHEMA_ID = "https://loopline.dev/schemas/spec.schema.json"


class Spec(StrictModel):
    """A model's whole life, declared.

    Attributes:
        name: the model's name: the MLflow registered model, the feature set and the Bento.
        description: what the model predicts; the first line of its model card.
        owner: who answers for it (a team or an address).
        data: where rows come from and which columns play which role.
        features: computed features (SQL expressions) and passthrough columns.
        training: candidate algorithms, the metric, the sweep.
        gates: what a candidate must reach, and its model card.
        serving: how the champion and challenger are served.
        monitoring: drift and performance checks.
        retraining: what starts a retraining run.
        notifications: where alerts go.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: Annotated[str, Field(min_length=1)]
    owner: str | None = None
    data: DataSpec
    features: Annotated[list[FeatureEntry], Field(min_length=1)]
    training: TrainingSpec
    gates: GatesSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    retraining: RetrainingSpec = Field(default_factory=RetrainingSpec)
    notifications: list[Notification] = Field(
        default_factory=lambda: list[Notification]([LogChannel(kind="log")])
    )

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        # Raised as InvalidSpec (not ValueError) so that pydantic lets it through untouched and
        # every cross-section problem keeps its own path.
        problems = consistency_problems(self)
        if problems:
            raise InvalidSpec(None, problems)
        return self

    @property
    def computed_features(self) -> list[ComputedFeature]:
        """The features computed by SQL expressions, in declaration order."""
        return [entry for entry in self.features if isinstance(entry, ComputedFeature)]

    @property
    def passthrough_features(self) -> dict[str, str]:
        """``{feature name: source column}`` of the source columns used unchanged as features,
        in declaration order (the two differ for a renamed column: ``{column: "vedge-mean", as:
        vedge_mean}``).
        """
        return {
            feature: column
            for entry in self.features
            if isinstance(entry, PassthroughFeatures)
            for feature, column in entry.columns
        }

    @property
    def passthrough_columns(self) -> list[str]:
        """The source columns used unchanged as features, in declaration order."""
        return list(self.passthrough_features.values())

    @property
    def feature_names(self) -> list[str]:
        """Every feature the model sees, in declaration order (a renamed column's ``as``)."""
        names: list[str] = []
        for entry in self.features:
            if isinstance(entry, ComputedFeature):
                names.append(entry.name)
            else:
                names.extend(feature for feature, _ in entry.columns)
        return names

    def content_hash(self) -> str:
        """A sha256 over the spec's canonical JSON: the same spec always hashes the same."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _problem(path: str, message: str, fix: str) -> SpecProblem:
    return SpecProblem(path=path, message=message, fix=fix)


def _passthrough_names(base: str, entry: PassthroughFeatures) -> list[tuple[str, str]]:
    """``(path, feature name)`` of a passthrough list's entries (a renamed one's path is its
    ``as``).
    """
    return [(f"{base}[{j}]" if isinstance(item, str) else f"{base}[{j}].as", feature)
            for j, (item, (feature, _)) in enumerate(zip(entry.passthrough, entry.columns,
                                                         strict=True))]


def _leaked_targets(base: str, entry: PassthroughFeatures, target: str) -> list[SpecProblem]:
    """A renamed passthrough of the target column: the answer under another name."""
    return [_problem(f"{base}[{j}].column", f"{item.column!r} is the target; a feature may not "
                     "read it", "remove it from the features (using the target as a feature "
                     "leaks the answer)")
            for j, item in enumerate(entry.passthrough)
            if isinstance(item, RenamedColumn) and item.column == target]


def consistency_problems(spec: Spec) -> list[SpecProblem]:
    """Every problem that spans sections; empty when the spec is consistent."""
    problems: list[SpecProblem] = []
    data, training = spec.data, spec.training
    reserved = {data.target: "the target"}
    if data.entity_id is not None:
        reserved[data.entity_id] = "the entity id"
    if data.event_time is not None:
        reserved[data.event_time] = "the event-time column"

    if data.split.kind == "time" and data.event_time is None:
        problems.append(_problem("data.split.kind", "a time split needs an event-time column",
                                 "set `data.event_time`, or use `split: {kind: random}`"))

    seen: dict[str, str] = {}
    for index, entry in enumerate(spec.features):
        if isinstance(entry, ComputedFeature):
            named = [(f"features[{index}].name", entry.name)]
        else:
            named = _passthrough_names(f"features[{index}].passthrough", entry)
            problems += _leaked_targets(f"features[{index}].passthrough", entry, data.target)
        for path, name in named:
            if name in reserved:
                problems.append(_problem(path, f"{name!r} is {reserved[name]}; a feature may not "
                                         "be", "remove it from the features (using the target "
                                         "as a feature leaks the answer)"))
            elif name in seen:
                problems.append(_problem(path, f"feature {name!r} is declared twice (first at "
                                         f"{seen[name]})", "give every feature its own name"))
            else:
                seen[name] = path
    if REQUEST_ID in seen or REQUEST_ID in spec.passthrough_columns:
        # A served request's own field: a column of that name could not be told apart from it.
        problems.append(_problem(seen.get(REQUEST_ID, "features"), f"`{REQUEST_ID}` is the id "
                                 "every served request carries; no feature or passthrough "
                                 "column may be called so", "rename the computed feature; a "
                                 "source column of that name cannot be served (raw requests "
                                 "carry source columns): rename it in the source"))

    known_metrics = metrics_for(training.task)
    metric_list = ", ".join(known_metrics)
    if training.metric.name not in known_metrics:
        problems.append(_problem("training.metric.name", f"{training.metric.name!r} is not a "
                                 f"{training.task} metric", f"use one of: {metric_list}"))
    candidate_names: dict[str, int] = {}
    for index, algorithm in enumerate(training.algorithms):
        base = f"training.algorithms[{index}]"
        if algorithm.kind == "logistic_regression" and training.task == "regression":
            problems.append(_problem(f"{base}.kind", "logistic_regression only classifies",
                                     "use gradient_boosting, random_forest or lightning_mlp"))
        for sub, message, fix in search_space_problems(algorithm):
            problems.append(_problem(f"{base}.{sub}", message, fix))
        name = algorithm.candidate_name
        if name in candidate_names:
            problems.append(_problem(f"{base}.name", f"two candidates are called {name!r}",
                                     "give one of them a `name:` of its own"))
        candidate_names[name] = index
    if training.sweep is not None:
        if training.sweep.sampler == "grid":
            for index, algorithm in enumerate(training.algorithms):
                for key, dist in algorithm.search.items():
                    if isinstance(dist, UniformSearch | LogUniformSearch):
                        problems.append(_problem(
                            f"training.algorithms[{index}].search.{key}", "a grid sweep cannot "
                            "enumerate a continuous range", "use {choice: [...]} or {int: [low, "
                            "high]} with the grid sampler, or sampler: tpe"))
        if training.sweep.storage == "sqlite" and training.sweep.parallelism > 1:
            problems.append(_problem("training.sweep.storage", "SQLite locks under parallel "
                                     "trials", "use storage: journal (one machine) or a "
                                     "postgresql:// URL (many machines), or parallelism: 1"))
        allowed = {**known_metrics, **COST_OBJECTIVES}
        for index, objective in enumerate(training.sweep.objectives):
            if objective.metric not in allowed:
                problems.append(_problem(f"training.sweep.objectives[{index}].metric",
                                         f"{objective.metric!r} does not apply to "
                                         f"{training.task}", f"use one of: {', '.join(allowed)}"))

    for section in ("thresholds", "champion_margin"):
        for metric in getattr(spec.gates, section):
            if metric not in known_metrics:
                problems.append(_problem(f"gates.{section}.{metric}", f"{metric!r} is not a "
                                         f"{training.task} metric", f"use one of: {metric_list}"))

    routing = spec.serving.routing
    sticky = routing.sticky_by if isinstance(routing, ABRouting | CanaryRouting) else None
    if sticky is not None and data.entity_id is None and sticky not in seen:
        problems.append(_problem("serving.routing.sticky_by", f"{sticky!r} is not a feature, and "
                                 "sticky routing by entity needs `data.entity_id`, which the spec "
                                 "does not set", f"set `data.entity_id: {sticky}` (the column "
                                 "that identifies an entity), or stick by a feature: "
                                 f"{', '.join(seen) or '(no features)'}"))
    elif sticky is not None and sticky not in {data.entity_id, *seen}:
        problems.append(_problem("serving.routing.sticky_by", f"{sticky!r} is neither the entity "
                                 "id nor a feature",
                                 f"use `{data.entity_id}` (the entity id) or a feature name"))

    for feature in spec.monitoring.drift.per_feature:
        if feature not in seen:
            problems.append(_problem(f"monitoring.drift.per_feature.{feature}",
                                     f"{feature!r} is not a feature",
                                     f"use one of: {', '.join(seen) or '(no features)'}"))
    problems += monitoring_problems(spec.monitoring, training.task, seen)
    problems += responsible_problems(spec)

    triggers = spec.retraining.on
    if "schedule" in triggers and spec.retraining.schedule is None:
        problems.append(_problem("retraining.schedule", "retraining on a schedule needs one",
                                 "add `schedule: {cron: \"0 3 * * 0\"}`, or drop `schedule` "
                                 "from `retraining.on`"))
    if "performance" in triggers and spec.monitoring.performance is None:
        problems.append(_problem("monitoring.performance", "retraining on performance needs "
                                 "performance monitoring", "add `monitoring.performance`, or "
                                 "drop `performance` from `retraining.on`"))
    if spec.retraining.learn_from_production.enabled and data.event_time is None:
        problems.append(_problem("retraining.learn_from_production.enabled", "learning from "
                                 "production needs an event-time column: each served answer "
                                 "joins with its served time as event time",
                                 "set `data.event_time`, or `learn_from_production: {enabled: "
                                 "false}`"))
    return problems
