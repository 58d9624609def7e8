"""The options every loopline task shares: ``@loopline_task`` is Prefect's ``@task`` without the
per-call costs that buy loopline nothing.

Measured against bare Prefect tasks (``python -m bench orchestration``), two things made a
loopline task cost 1.8x a bare one (8.7 against 4.7 ms per task run here), both per call and
both Prefect's defaults:

- Prefect walks every argument, recursively, twice per call (once to resolve futures and states
  nested in it, once to record upstream task runs): about 1.7 ms for a ``Spec`` and 1 ms for a
  ``FeatureSetManifest`` on this machine, against 3-5 ms for a whole bare task run.
  Loopline's arguments are typed values (frozen pydantic models, dataclasses) that never hold a
  future, so they are handed over ``opaque``: Prefect still resolves the value itself and still
  records the task that returned it (it links a result to its producer by the object's
  identity), but does not walk its fields. The upstream edges in the Prefect UI stay the same,
  less accidental ones: walking matched nested values by identity, so e.g. a string the ``Spec``
  shares with a ``FeatureSetManifest`` made ``materialize-features`` look like an input of
  every task given the ``Spec``.
- Prefect's default cache policy hashes every input (and the task's source) on every call, so
  that a result could be reused; a polars frame is pickled whole to be hashed (1.5 s for 1M rows
  x 20 columns). Loopline persists no task results, so that key is never used, and its tasks
  must not be skipped anyway: they read the latest feature set, the registry or a file that may
  have changed, or have side effects (MLflow runs, registry changes, events, alerts). Hence
  ``cache_policy=NO_CACHE``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import is_dataclass
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque
from pydantic import BaseModel

P = ParamSpec("P")
R = TypeVar("R")


def _unwalked(value: Any) -> Any:
    """``value`` wrapped ``opaque`` when it is a typed value (a pydantic model or a dataclass
    instance); anything else (futures, lists, dicts, frames) as it is, so Prefect resolves and
    tracks it as usual.
    """
    if isinstance(value, BaseModel) or (is_dataclass(value) and not isinstance(value, type)):
        return opaque(value)
    return value


class LooplineTask(Task[P, R]):
    """A Prefect task whose typed arguments reach Prefect ``opaque`` (see the module's notes).

    ``map`` is Prefect's own (it must iterate its arguments); ``with_options`` returns a plain
    Prefect ``Task`` with the same options, cache policy included.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task (Prefect's ``Task.__call__``)."""
        return super().__call__(*[_unwalked(a) for a in args],
                                **{k: _unwalked(v) for k, v in kwargs.items()})

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the task to the flow's task runner (Prefect's ``Task.submit``)."""
        return super().submit(*[_unwalked(a) for a in args],
                              **{k: _unwalked(v) for k, v in kwargs.items()})


def loopline_task(*, name: str, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@task(name=..., **options)`` for loopline: no cache policy, typed arguments not walked.

    Args:
        name: the task's name in the Prefect UI.
        **options: any other ``prefect.Task`` option (``retries``, ``retry_delay_seconds``...).
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return LooplineTask(fn=fn, name=name, cache_policy=NO_CACHE, **options)

    return decorate
