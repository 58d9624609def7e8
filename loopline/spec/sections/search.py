"""Search spaces of a sweep: the distributions a hyperparameter's values are drawn from."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Discriminator, Field, Tag

from loopline.spec.sections.base import StrictModel


class UniformSearch(StrictModel):
    """A float drawn uniformly from ``[low, high]``.

    Attributes:
        uniform: `[low, high]`.
    """

    uniform: Annotated[list[float], Field(min_length=2, max_length=2)]


class LogUniformSearch(StrictModel):
    """A float drawn log-uniformly from ``[low, high]`` (both above zero).

    Attributes:
        log_uniform: `[low, high]`, both above zero.
    """

    log_uniform: Annotated[list[float], Field(min_length=2, max_length=2)]


class IntSearch(StrictModel):
    """An integer drawn from ``[low, high]`` (inclusive), optionally in steps.

    Attributes:
        int_range: `[low, high]`, inclusive (written `int:`).
        step: the step between values.
    """

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    int_range: Annotated[list[int], Field(min_length=2, max_length=2, alias="int")]
    step: Annotated[int, Field(ge=1)] = 1


class ChoiceSearch(StrictModel):
    """One of the listed values (any type the hyperparameter accepts).

    Attributes:
        choice: the values to choose from.
    """

    choice: Annotated[list[Any], Field(min_length=1)]


_SEARCH_KINDS = ("uniform", "log_uniform", "int", "choice")


def _search_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return next((key for key in _SEARCH_KINDS if key in value), None)
    kinds = {UniformSearch: "uniform", LogUniformSearch: "log_uniform", IntSearch: "int",
             ChoiceSearch: "choice"}
    return kinds.get(type(value))  # type: ignore[call-overload, no-any-return]


SearchDistribution = Annotated[
    Annotated[UniformSearch, Tag("uniform")]
    | Annotated[LogUniformSearch, Tag("log_uniform")]
    | Annotated[IntSearch, Tag("int")]
    | Annotated[ChoiceSearch, Tag("choice")],
    Discriminator(
        _search_kind,
        custom_error_type="search_distribution",
        custom_error_message="a search distribution is one of {uniform: [low, high]}, "
        "{log_uniform: [low, high]}, {int: [low, high]} or {choice: [a, b, ...]}",
    ),
]


def search_bounds(dist: SearchDistribution) -> tuple[Any, Any] | None:
    """``(low, high)`` of a range distribution, None for a choice."""
    if isinstance(dist, UniformSearch):
        return dist.uniform[0], dist.uniform[1]
    if isinstance(dist, LogUniformSearch):
        return dist.log_uniform[0], dist.log_uniform[1]
    if isinstance(dist, IntSearch):
        return dist.int_range[0], dist.int_range[1]
    return None
