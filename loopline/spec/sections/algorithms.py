"""The candidate algorithms of the ``training`` section: each one's hyperparameters, its search
space, and the Lightning trainer settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError

from loopline.spec.sections.base import NAME_PATTERN, PositiveFloat, PositiveInt, StrictModel
from loopline.spec.sections.search import LogUniformSearch, SearchDistribution, search_bounds


class LogisticRegressionParams(StrictModel):
    """scikit-learn ``LogisticRegression`` hyperparameters.

    Attributes:
        C: inverse regularization strength.
        max_iter: iterations of the solver at most.
        class_weight: `balanced` weighs classes by inverse frequency.
    """

    C: PositiveFloat = 1.0
    max_iter: PositiveInt = 1000
    class_weight: Literal["balanced"] | None = None


class RandomForestParams(StrictModel):
    """scikit-learn random forest hyperparameters.

    Attributes:
        n_estimators: trees in the forest.
        max_depth: depth of each tree at most (`null`: unlimited).
        min_samples_leaf: rows in a leaf at least.
        class_weight: `balanced` weighs classes by inverse frequency (classification).
    """

    n_estimators: PositiveInt = 200
    max_depth: PositiveInt | None = None
    min_samples_leaf: PositiveInt = 1
    class_weight: Literal["balanced"] | None = None


class GradientBoostingParams(StrictModel):
    """scikit-learn histogram gradient boosting hyperparameters.

    Attributes:
        n_estimators: boosting iterations.
        max_depth: depth of each tree at most (`null`: unlimited).
        learning_rate: shrinkage of each tree's contribution.
        min_samples_leaf: rows in a leaf at least.
    """

    n_estimators: PositiveInt = 100
    max_depth: PositiveInt | None = 3
    learning_rate: PositiveFloat = 0.1
    min_samples_leaf: PositiveInt = 20


class MLPParams(StrictModel):
    """Hyperparameters of the Lightning multi-layer perceptron.

    Attributes:
        hidden: the width of each hidden layer, e.g. `[64, 32]`.
        dropout: dropout after each hidden layer.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        batch_size: rows per training batch.
    """

    hidden: Annotated[list[PositiveInt], Field(min_length=1, max_length=8)] = Field(
        default_factory=lambda: [64, 32]
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    batch_size: PositiveInt = 64


class EarlyStopping(StrictModel):
    """Stop training when ``monitor`` stops improving for ``patience`` epochs.

    Attributes:
        monitor: the logged metric to watch: `val_loss` or `val_<metric>` (e.g. `val_f1`).
        patience: epochs without improvement before stopping.
        mode: `min` or `max`; defaults to the metric's natural direction.
    """

    monitor: Annotated[str, Field(pattern=r"^(val|train)_[a-z0-9_]+$")] = "val_loss"
    patience: PositiveInt = 3
    mode: Literal["min", "max"] | None = None


class TrainerSettings(StrictModel):
    """Passed through to ``lightning.Trainer``; the same spec runs on a laptop CPU or GPUs.

    Attributes:
        accelerator: `auto`, `cpu`, `gpu`, `cuda` or `mps`.
        devices: devices per node, or `auto`.
        strategy: `auto`, `ddp`, `ddp_spawn`, `fsdp`, `deepspeed` or `single_device`.
        num_nodes: machines to train on.
        precision: e.g. `32-true`, or `bf16-mixed` on GPUs that support it.
        max_epochs: epochs at most.
        early_stopping: stop when a metric stops improving (off when left out).
        checkpointing: keep the best epoch's weights (by the early-stopping monitor, else
            `val_loss`) instead of the last.
        deterministic: deterministic algorithms, for reproducible training.
    """

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: PositiveInt | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed", "single_device"] = "auto"
    num_nodes: PositiveInt = 1
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"] = "32-true"
    max_epochs: PositiveInt = 20
    early_stopping: EarlyStopping | None = None
    checkpointing: bool = True
    deterministic: bool = True


class _Algorithm(StrictModel):
    """Fields every algorithm shares; ``params`` fixes hyperparameters, ``search`` sweeps them.

    Attributes:
        name: the candidate's name in runs and leaderboards (defaults to `kind`); needed when two
            candidates share a kind.
        search: search distributions per hyperparameter for sweeps, e.g. `{C: {log_uniform: [0.01,
            10]}}`.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    search: dict[str, SearchDistribution] = Field(default_factory=dict)

    @property
    def candidate_name(self) -> str:
        """The name this candidate goes by in runs and leaderboards (``kind`` if not named)."""
        return self.name or str(self.kind)  # type: ignore[attr-defined]


class LogisticRegression(_Algorithm):
    """scikit-learn logistic regression (classification only).

    Attributes:
        kind: `logistic_regression`.
        params: fixed hyperparameters (the rest keep their defaults).
    """

    kind: Literal["logistic_regression"]
    params: LogisticRegressionParams = Field(default_factory=LogisticRegressionParams)


class RandomForest(_Algorithm):
    """scikit-learn random forest (classification or regression).

    Attributes:
        kind: `random_forest`.
        params: fixed hyperparameters (the rest keep their defaults).
    """

    kind: Literal["random_forest"]
    params: RandomForestParams = Field(default_factory=RandomForestParams)


class GradientBoosting(_Algorithm):
    """scikit-learn histogram gradient boosting (classification or regression).

    Attributes:
        kind: `gradient_boosting`.
        params: fixed hyperparameters (the rest keep their defaults).
    """

    kind: Literal["gradient_boosting"]
    params: GradientBoostingParams = Field(default_factory=GradientBoostingParams)


class LightningMLP(_Algorithm):
    """A multi-layer perceptron trained with Lightning (classification or regression).

    Attributes:
        kind: `lightning_mlp`.
        params: fixed hyperparameters (the rest keep their defaults).
        trainer: Lightning trainer settings.
    """

    kind: Literal["lightning_mlp"]
    params: MLPParams = Field(default_factory=MLPParams)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)


Algorithm = Annotated[
    LogisticRegression | RandomForest | GradientBoosting | LightningMLP,
    Field(discriminator="kind"),
]




def search_space_problems(algorithm: Algorithm) -> list[tuple[str, str, str]]:
    """Check an algorithm's search space against its hyperparameters.

    Returns:
        ``(path below the algorithm, what is wrong, how to fix it)`` for every problem.
    """
    params_model = type(algorithm.params)
    known = ", ".join(params_model.model_fields)
    problems: list[tuple[str, str, str]] = []
    for key, dist in algorithm.search.items():
        path = f"search.{key}"
        if key not in params_model.model_fields:
            problems.append((path, f"{algorithm.kind} has no hyperparameter {key!r}",
                             f"use one of: {known}"))
            continue
        bounds = search_bounds(dist)
        values = list(bounds) if bounds is not None else list(dist.choice)  # type: ignore[union-attr]
        if bounds is not None and bounds[0] > bounds[1]:
            problems.append((path, f"low {bounds[0]} is above high {bounds[1]}",
                             f"write the range as [low, high], e.g. [{bounds[1]}, {bounds[0]}]"))
        if isinstance(dist, LogUniformSearch) and min(values) <= 0:
            problems.append((path, "log_uniform bounds must be above zero",
                             "use bounds above zero, or `uniform` for a range that includes 0"))
        for value in values:
            try:
                params_model.model_validate({key: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                problems.append((path, f"{value!r} is not a valid {key}: {reason}",
                                 f"give values that {key} accepts (its default is "
                                 f"{params_model.model_fields[key].get_default(call_default_factory=True)!r})"))
    return problems
