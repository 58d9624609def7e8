"""Building blocks shared by every spec section: the strict base model and small value types.

Values that people write as short strings (``30m``, ``">= 0.85"``, ``"+1%"``) stay strings in the
model, so a spec dumps back to exactly what was written; the parsers here turn them into numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COMPARISON = re.compile(r"^\s*(>=|<=|>|<|==)\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
_MARGIN = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(%?)\s*$")

#: A name used as a key in MLflow, the feature store and BentoML (lowercase, digits, ``_``, ``-``).
#: It must end with a letter or digit and stay within 63 characters: that is BentoML's rule for a
#: Bento's name, which is the model's own (a ``-`` or ``_`` at the end would be refused by the
#: Bento build, after training; see :mod:`loopline.naming` for every name derived from it).
NAME_PATTERN = r"^[a-z]([a-z0-9_-]{0,61}[a-z0-9])?$"
#: A column or feature name as polars SQL can reference it without quoting.
COLUMN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


_ATTRIBUTE = re.compile(r"^(\s+)([A-Za-z_]\w*): (.*)$")


def attribute_docs(docstring: str) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring, as ``{name: text}``."""
    docs: dict[str, str] = {}
    lines = docstring.expandtabs().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    header_indent = len(lines[start]) - len(lines[start].lstrip())
    current: str | None = None
    entry_indent = 0
    for line in lines[start + 1:]:
        if not line.strip():
            current = None
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        match = _ATTRIBUTE.match(line)
        if match and (current is None or indent <= entry_indent):
            current, entry_indent = match.group(2), indent
            docs[current] = match.group(3).strip()
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs


class StrictModel(BaseModel):
    """Base of every spec model: unknown keys are errors, values are never coerced, and a
    validated spec cannot be changed afterwards.

    Each field's description comes from its class's ``Attributes:`` docstring section, so the
    JSON Schema (what editors show) and ``docs/spec.md`` say what the code says.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        docs = attribute_docs(cls.__doc__ or "")
        described = False
        for name, info in cls.model_fields.items():
            if info.description is None and name in docs:
                info.description = docs[name]
                described = True
        if described:
            cls.model_rebuild(force=True)


def spec_error(message: str, fix: str) -> PydanticCustomError:
    """A validation error that carries its fix, so the spec loader can print both apart."""
    return PydanticCustomError("loopline", "{message}", {"message": message, "fix": fix})


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``6h``, ``1d``, ``2w`` (or ``250ms``) into a timedelta.

    Raises:
        ValueError: the text is not a number followed by one of ms, s, m, h, d, w.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (a number and a unit: ms, s, m, h, d, w)")
    amount, unit = match.groups()
    seconds = float(amount) * _DURATION_UNITS[unit]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parsed_by(parse: Callable[[str], object], fix: str) -> AfterValidator:
    """A validator of text that ``parse`` must accept: the text stays as written; when ``parse``
    raises ValueError its message is the problem and ``fix`` says how to write the value.
    """

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise spec_error(str(exc), fix) from exc
        return text

    return AfterValidator(check)


Duration = Annotated[str, parsed_by(parse_duration,
                                    "write a number and a unit, e.g. 90s, 30m, 6h, 1d, 2w")]


@dataclass(frozen=True)
class Comparison:
    """A parsed threshold such as ``>= 0.85``."""

    op: Literal[">=", "<=", ">", "<", "=="]
    value: float

    def holds(self, observed: float) -> bool:
        """Whether ``observed`` satisfies the comparison."""
        return {
            ">=": observed >= self.value,
            "<=": observed <= self.value,
            ">": observed > self.value,
            "<": observed < self.value,
            "==": observed == self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def parse_comparison(text: str) -> Comparison:
    """Parse ``">= 0.85"`` into a :class:`Comparison`.

    Raises:
        ValueError: the text is not an operator (>=, <=, >, <, ==) followed by a number.
    """
    match = _COMPARISON.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a comparison (an operator and a number)")
    op, value = match.groups()
    return Comparison(op=op, value=float(value))  # type: ignore[arg-type]


ComparisonText = Annotated[str, parsed_by(parse_comparison,
                                          'write an operator and a number, e.g. ">= 0.85"')]


@dataclass(frozen=True)
class Margin:
    """A required improvement over the champion: relative (``+1%``) or absolute (``+0.01``)."""

    amount: float
    relative: bool

    def required(self, champion_value: float, direction: Literal["maximize", "minimize"]) -> float:
        """The value a candidate must reach to beat ``champion_value`` by this margin."""
        step = abs(champion_value) * self.amount if self.relative else self.amount
        return champion_value + step if direction == "maximize" else champion_value - step


def parse_margin(text: str) -> Margin:
    """Parse ``"+1%"`` (relative) or ``"+0.01"`` (absolute) into a :class:`Margin`.

    Raises:
        ValueError: the text is not a signed number, optionally followed by ``%``.
    """
    match = _MARGIN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a margin (a signed number, optionally with %)")
    amount, percent = match.groups()
    if percent:
        return Margin(amount=float(amount) / 100.0, relative=True)
    return Margin(amount=float(amount), relative=False)


MarginText = Annotated[str, parsed_by(parse_margin, 'write a relative margin such as "+1%" or '
                                      'an absolute one such as "+0.01"')]


def check_cron(text: str) -> None:
    """Check a cron expression with cronsim, the parser Prefect's own cron schedules use (so
    what passes here deploys).

    Raises:
        ValueError: the text is not a cron expression.
    """
    from cronsim import CronSim, CronSimError

    try:
        CronSim(text, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"{text!r} is not a cron expression ({exc})") from exc


CronText = Annotated[str, parsed_by(check_cron, 'write five fields: minute hour day month '
                                    'weekday, e.g. "0 3 * * 0"')]

PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class Schedule(StrictModel):
    """When something runs: a cron expression or a fixed interval (exactly one).

    Attributes:
        cron: a cron expression, e.g. `"0 * * * *"`.
        interval: a fixed interval, e.g. `1h`.
        timezone: the time zone of the cron expression.
    """

    cron: CronText | None = None
    interval: Duration | None = None
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.cron is None) == (self.interval is None):
            raise spec_error("a schedule needs exactly one of `cron` and `interval`",
                             'write `cron: "0 * * * *"` or `interval: 1h`')
        # What validates deploys: Prefect's schedules take IANA zone names only (the zoneinfo
        # database), and a run a second at most.
        if self.timezone not in _time_zones():
            raise spec_error(f"{self.timezone!r} is not an IANA time zone",
                             "use a name such as `UTC`, `Europe/Paris` or `America/New_York`")
        if self.interval is not None and parse_duration(self.interval) < timedelta(seconds=1):
            raise spec_error(f"an interval of {self.interval} would start runs faster than "
                             "Prefect schedules them", "use an interval of 1s or more, e.g. `5m`")
        return self


@functools.cache
def _time_zones() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())
