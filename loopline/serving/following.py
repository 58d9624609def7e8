"""A live service following the registry: the versions its aliases name are loaded in the
background, warmed up with a real prediction and swapped in, with no restart.

:class:`RegistryFollower` holds what a service worker answers with, a :class:`ServedModels`
snapshot. A request reads the snapshot once and uses it to the end, so a swap between two of
its steps cannot mix versions; replacing the snapshot is one reference assignment, atomic under
Python's memory model, so no request ever waits for a swap. Each worker follows on its own
thread: it resolves the aliases every ``interval_s`` seconds and at once when the shared live
state's nudge counter moves (the promote, rollback and rollout flows bump it).

A version that fails to load or to warm up is never swapped in: the worker keeps answering with
what it has, reports itself degraded and tells ``on_problem`` once per problem; a registry that
cannot be reached is the same. A version whose files do not match its signature is such a version
(the loader refuses it). Given the model's name, every swap and every refusal is appended to the
audit log (``service.swap``, ``service.refused``); a failed audit write is logged, never raised:
the service keeps serving. Recently served versions stay loaded (``keep_loaded``), so a
promotion of the challenger or a rollback to the previous champion swaps without loading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from loopline.audit import audit_log
from loopline.serving.live_state import VARIANTS, Variant
from loopline.settings import worker_name
from loopline.training.modeling.tabular_model import TabularModel

logger = logging.getLogger("loopline.serving")

#: The versions the registry's aliases name now (None: the alias names no version).
Resolve = Callable[[], Mapping[Variant, int | None]]
#: Loads a registered version of the served model.
Load = Callable[[int], TabularModel]
#: Raises when a freshly loaded model cannot answer a real prediction.
WarmUp = Callable[[TabularModel], None]


@dataclass(frozen=True)
class ServedModels:
    """What a worker answers with: the loaded models and their registry versions, by variant.

    Attributes:
        models: the champion's model, and the challenger's when one is served.
        versions: the registry version of each model in ``models``.
    """

    models: Mapping[Variant, TabularModel]
    versions: Mapping[Variant, int]

    def __post_init__(self) -> None:
        if "champion" not in self.models or set(self.models) != set(self.versions):
            raise ValueError("served models need a champion and a version for every model")

    @property
    def has_challenger(self) -> bool:
        """Whether a challenger is served."""
        return "challenger" in self.models


@dataclass(frozen=True)
class FollowStatus:
    """How following the registry goes (``/health`` shows it).

    Attributes:
        status: ``ok``, or ``degraded`` while a version the registry names cannot be served or
            the registry cannot be reached (the service answers with what it has).
        problem: what is wrong, when degraded.
        since: when the problem began (ISO 8601, UTC).
        last_checked: when the registry was last asked (ISO 8601, UTC).
        checks: how many times it was asked.
        swaps: how many times the served versions changed.
    """

    status: Literal["ok", "degraded"]
    problem: str | None = None
    since: str | None = None
    last_checked: str | None = None
    checks: int = 0
    swaps: int = 0


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class _Failure:
    reason: str
    at: float
    told: bool = False


@dataclass
class _Progress:
    checks: int = 0
    swaps: int = 0
    last_checked: str | None = None
    problem: str | None = None
    since: str | None = None
    failures: dict[int, _Failure] = field(default_factory=dict)


class RegistryFollower:
    """Keeps a worker's served models on the versions the registry's aliases name.

    Args:
        served: what the worker serves at start (loaded and warmed up by the caller).
        resolve: the versions the aliases name now; raises when the registry cannot be reached.
        load: loads a version.
        warm_up: raises when a loaded model cannot answer a real prediction.
        interval_s: seconds between two resolutions.
        nudges: the shared nudge counter (cheap to read); a change resolves at once.
        on_swap: told of every swap, old snapshot then new, after it happened.
        on_problem: told once of every new problem (a version that cannot be served, the
            registry out of reach), e.g. to alert.
        keep_loaded: versions kept loaded besides the served ones, for swaps without a load.
        retry_after_s: a version that failed is tried again after this long (or when nudged).
        model_name: the served model; given, swaps and refusals go to the audit log.
    """

    #: Seconds between two reads of the nudge counter.
    NUDGE_POLL_S = 0.2

    def __init__(self, served: ServedModels, *, resolve: Resolve, load: Load, warm_up: WarmUp,
                 interval_s: float, nudges: Callable[[], int] | None = None,
                 on_swap: Callable[[ServedModels, ServedModels], None] | None = None,
                 on_problem: Callable[[str], None] | None = None, keep_loaded: int = 2,
                 retry_after_s: float = 60.0, model_name: str | None = None) -> None:
        self._served = served
        self.resolve, self.load, self.warm_up = resolve, load, warm_up
        self.interval_s = interval_s
        self.nudges = nudges
        self.on_swap, self.on_problem = on_swap, on_problem
        self.keep_loaded, self.retry_after_s = keep_loaded, retry_after_s
        self.model_name = model_name
        self._loaded: OrderedDict[int, TabularModel] = OrderedDict(
            (served.versions[variant], served.models[variant]) for variant in served.models)
        self._progress = _Progress()
        self._check_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> ServedModels:
        """The snapshot to answer a request with (read it once per request)."""
        return self._served

    def status(self) -> FollowStatus:
        """Whether the worker serves what the registry names, and since when not."""
        progress = self._progress
        return FollowStatus(status="degraded" if progress.problem else "ok",
                            problem=progress.problem, since=progress.since,
                            last_checked=progress.last_checked, checks=progress.checks,
                            swaps=progress.swaps)

    # --- one resolution -------------------------------------------------------------------------

    def check(self, *, retry_failed: bool = False) -> bool:
        """Resolve the aliases once and swap in what changed; returns whether it swapped.

        Args:
            retry_failed: try versions that failed before at once (a nudge), not only after
                ``retry_after_s``.
        """
        with self._check_lock:
            progress = self._progress
            progress.checks += 1
            progress.last_checked = _now()
            try:
                wanted = dict(self.resolve())
            except Exception as exc:
                self._trouble(f"the registry cannot be reached: {type(exc).__name__}: {exc}")
                return False
            current = self._served
            models: dict[Variant, TabularModel] = {}
            versions: dict[Variant, int] = {}
            problems = []
            for variant in VARIANTS:
                version = wanted.get(variant)
                if version is None:
                    if variant == "champion":  # never serve nothing: keep the champion
                        models[variant], versions[variant] = current.models["champion"], \
                            current.versions["champion"]
                    continue
                model, problem = self._ready(variant, version, retry_failed)
                if model is None:
                    problems.append(f"{variant} v{version} {problem}")
                    if variant in current.models:  # keep answering with what it has
                        models[variant], versions[variant] = current.models[variant], \
                            current.versions[variant]
                    continue
                models[variant], versions[variant] = model, version
            if problems:
                self._trouble("; ".join(problems) + ": not swapped in, the service answers with "
                              + ", ".join(f"{v} v{n}" for v, n in versions.items()))
            else:
                self._recovered()
            if dict(current.versions) == versions:
                return False
            new = ServedModels(models=models, versions=versions)
            self._served = new  # the swap: one assignment
            progress.swaps += 1
            self._release(new)
        logger.warning("now serving %s (was %s)", _describe(new), _describe(current))
        self._audit("service.swap", f"now serving {_describe(new)} (was {_describe(current)})",
                    new.versions["champion"], {"old": dict(current.versions),
                                               "new": dict(new.versions)})
        if self.on_swap is not None:
            self.on_swap(current, new)
        return True

    def _ready(self, variant: Variant, version: int, retry_failed: bool
               ) -> tuple[TabularModel | None, str]:
        """The loaded, warmed-up model of ``version``, or None and why not."""
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version], ""
        failure = self._progress.failures.get(version)
        if failure is not None and not retry_failed and time.monotonic() - failure.at < \
                self.retry_after_s:
            return None, failure.reason
        try:
            model = self.load(version)
        except Exception as exc:
            return None, self._failed(variant, version, exc, "failed to load")
        try:
            self.warm_up(model)
        except Exception as exc:
            return None, self._failed(variant, version, exc, "failed its warm-up prediction")
        self._progress.failures.pop(version, None)
        self._loaded[version] = model
        return model, ""

    def _failed(self, variant: Variant, version: int, exc: Exception, what: str) -> str:
        reason = f"{what}: {type(exc).__name__}: {exc}"
        before = self._progress.failures.get(version)
        self._progress.failures[version] = _Failure(reason, time.monotonic())
        if before is None or before.reason != reason:  # each refusal once, not at every retry
            self._audit("service.refused", f"{variant} v{version} not swapped in: {what} "
                        f"({type(exc).__name__})", version,
                        {"variant": variant, "error": type(exc).__name__, "reason": reason,
                         "serving": dict(self._served.versions)})
        return reason

    def _audit(self, kind: str, summary: str, version: int,
               details: Mapping[str, object]) -> None:
        """Append to the audit log; a failure is logged, never raised (the service serves on)."""
        if self.model_name is None:
            return
        try:
            audit_log().append(kind=kind, model=self.model_name, actor=f"service {worker_name()}",
                               summary=summary, version=version, details=details)
        except Exception:
            logger.exception("could not append %s to the audit log", kind)

    def _release(self, served: ServedModels) -> None:
        """Forget all but the served versions and the ``keep_loaded`` most recent others."""
        keep = set(served.versions.values())
        others = [version for version in self._loaded if version not in keep]
        for version in others[:max(0, len(others) - self.keep_loaded)]:
            del self._loaded[version]

    def _trouble(self, problem: str) -> None:
        progress = self._progress
        if progress.problem == problem:
            return
        if progress.problem is None:
            progress.since = _now()
        progress.problem = problem
        logger.error("following the registry: %s", problem)
        if self.on_problem is not None:
            try:
                self.on_problem(problem)
            except Exception:
                logger.exception("could not report a problem of following the registry")

    def _recovered(self) -> None:
        if self._progress.problem is not None:
            logger.warning("following the registry: recovered from: %s", self._progress.problem)
        self._progress.problem = self._progress.since = None

    # --- the background thread ------------------------------------------------------------------

    def start(self) -> None:
        """Follow on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loopline-follow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop following (the served models stay)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Resolve at once (and try failed versions again)."""
        self._wake.set()

    def _run(self) -> None:
        seen = self._read_nudges()
        due = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            woken = self._wake.wait(min(self.NUDGE_POLL_S, max(0.0, due - time.monotonic())))
            if self._stop.is_set():
                return
            self._wake.clear()
            nudged = self._read_nudges()
            if woken or nudged != seen or time.monotonic() >= due:
                pushed = woken or nudged != seen
                seen = nudged
                try:
                    self.check(retry_failed=pushed)
                except Exception:  # the thread must survive whatever a check meets
                    logger.exception("following the registry failed")
                due = time.monotonic() + self.interval_s

    def _read_nudges(self) -> int | None:
        if self.nudges is None:
            return None
        try:
            return self.nudges()
        except Exception:
            return None


def _describe(served: ServedModels) -> str:
    return ", ".join(f"{variant} v{version}" for variant, version in served.versions.items())
