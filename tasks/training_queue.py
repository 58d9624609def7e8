"""The Prefect side of the training queue; the rules are :mod:`loopline.training.queueing`'s.

- :func:`ensure_work_pools` creates or updates the work pools the deployments name: the training
  pool with its concurrency limit and one work queue per priority (Prefect priorities 1-4);
- :func:`submit_training_run` queues a run of a deployment in the queue of its priority, its
  policy in the run's ``env`` job variable (``run_deployment(..., work_queue_name=...)``);
- :func:`requeue_with_backoff`, the train and sweep flows' ``on_failure`` hook, queues the next
  attempt of a failed deployment run in the same queue after an exponential backoff.

Prefect's own flow ``retries`` wait a constant delay, in the failed run's process: that process
keeps its pool slot while it waits, so a more urgent run could not overtake it. A retry queued
as a new scheduled run releases the slot and waits its turn by priority like any other run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import ObjectNotFound
from prefect.logging.loggers import flow_run_logger
from prefect.settings import PREFECT_API_URL
from prefect.states import Scheduled

from loopline.errors import PrefectApiUnreachable, TrainingQueueNotReady
from loopline.spec.sections.queue import PRIORITIES, Priority
from loopline.training.queueing import (
    PROCESS_POOL,
    TRAINING_POOL,
    RunPolicy,
    queue_name,
    queue_priority,
)

T = TypeVar("T")
_ATTEMPT_TAG = "attempt:"


@dataclass(frozen=True)
class PoolState:
    """A work pool as :func:`ensure_work_pools` left it.

    Attributes:
        name: the pool.
        type: its worker type (``process``, ``kubernetes``, ...).
        concurrency_limit: runs it starts at once, at most (None: no limit).
        queues: ``(queue, Prefect priority)``, the most urgent first.
        created: whether this call created it.
    """

    name: str
    type: str
    concurrency_limit: int | None
    queues: list[tuple[str, int]]
    created: bool


@dataclass(frozen=True)
class SubmittedRun:
    """A flow run queued by :func:`submit_training_run`.

    Attributes:
        id: the flow run's id.
        name: the flow run's name.
        deployment: ``flow/deployment``.
        work_pool: the deployment's work pool.
        work_queue: the queue the run waits in.
        priority: that queue's Prefect priority.
    """

    id: str
    name: str
    deployment: str
    work_pool: str
    work_queue: str
    priority: int


@contextmanager
def prefect_client() -> Iterator[SyncPrefectClient]:
    """A synchronous Prefect client; an unreachable API raises :class:`PrefectApiUnreachable`."""
    try:
        with get_client(sync_client=True) as client:
            yield client
    except httpx.TransportError as exc:
        raise PrefectApiUnreachable(
            f"the Prefect API at {PREFECT_API_URL.value() or '(ephemeral)'} did not answer: {exc}"
        ) from exc


def _process_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_work_pools(max_trainings: int, pools: Iterable[str] = (PROCESS_POOL, TRAINING_POOL)
                      ) -> list[PoolState]:
    """Create the work pools that are missing (``process`` pools) and set up the training pool:
    its concurrency limit and its queues ``urgent``, ``high``, ``normal``, ``low`` with Prefect
    priorities 1-4. Idempotent; a pool that exists keeps its type and job template, so the same
    names may be Kubernetes or Docker pools on shared infrastructure.

    Args:
        max_trainings: the training pool's concurrency limit: trainings running at once, at most.
        pools: every pool to have (the training pool is always among them).

    Returns:
        Each pool as it is now.

    Raises:
        ValueError: ``max_trainings`` is below 1.
        PrefectApiUnreachable: the Prefect API did not answer.
    """
    if max_trainings < 1:
        raise ValueError(f"max_trainings must be 1 or more, not {max_trainings}")
    states = []
    with prefect_client() as client:
        for pool in dict.fromkeys([*pools, TRAINING_POOL]):
            limit = max_trainings if pool == TRAINING_POOL else None
            created = False
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process", base_job_template=_process_template(),
                    concurrency_limit=limit))
                created = True
            else:
                if pool == TRAINING_POOL and existing.concurrency_limit != limit:
                    client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
            if pool == TRAINING_POOL:
                _ensure_priority_queues(client, pool)
            found = client.read_work_pool(pool)
            queues = sorted(((q.name, q.priority) for q in
                             client.read_work_queues(work_pool_name=pool)), key=lambda q: q[1])
            states.append(PoolState(name=pool, type=found.type,
                                    concurrency_limit=found.concurrency_limit, queues=queues,
                                    created=created))
    return states


def _ensure_priority_queues(client: SyncPrefectClient, pool: str) -> None:
    existing = {q.name: q for q in client.read_work_queues(work_pool_name=pool)}
    # Most urgent first: Prefect shifts a queue that holds a priority being taken one down, so
    # setting 1, 2, 3, 4 in order never moves a queue already set (the pool's `default` queue
    # ends up last).
    for priority in PRIORITIES:
        name, rank = queue_name(priority), queue_priority(priority)
        description = f"loopline training runs of priority {priority} (Prefect priority {rank})"
        if name in existing:
            client.update_work_queue(existing[name].id, priority=rank, description=description)
        else:
            client.create_work_queue(name=name, work_pool_name=pool, priority=rank,
                                     description=description)


def submit_training_run(flow: str, spec_path: str, priority: Priority, policy: RunPolicy
                        ) -> SubmittedRun:
    """Queue a run of the ``flow`` deployment (``loopline-<flow>/<flow>``) for ``spec_path`` in
    the queue of ``priority``, carrying ``policy``; returns at once (it does not wait).

    Args:
        flow: ``train`` or ``sweep``.
        spec_path: the spec, as the deployment's runs see it (relative to the project root).
        priority: the queue to join.
        policy: the run's timeout and retries, carried in its ``env`` job variable.

    Raises:
        TrainingQueueNotReady: the deployment or the priority's queue is missing, or the queue
            has another Prefect priority than loopline's.
        PrefectApiUnreachable: the Prefect API did not answer.
    """
    from prefect.deployments import run_deployment

    deployment_name = f"loopline-{flow}/{flow}"
    queue, rank = queue_name(priority), queue_priority(priority)
    fix = "run `loopline work-pools`, then `prefect --no-prompt deploy --all`"
    with prefect_client() as client:
        deployment = _or_not_ready(lambda: client.read_deployment_by_name(deployment_name),
                                   f"no deployment {deployment_name}: {fix}")
        pool = deployment.work_pool_name or ""
        found = _or_not_ready(
            lambda: client.read_work_queue_by_name(name=queue, work_pool_name=pool),
            f"work pool {pool!r} has no queue {queue!r}: {fix}")
        if found.priority != rank:
            raise TrainingQueueNotReady(
                f"queue {queue!r} of work pool {pool!r} has Prefect priority {found.priority}, "
                f"not {rank}, so it would not be served in order: {fix}")
        run = run_deployment(deployment_name, parameters={"spec_path": spec_path},
                             work_queue_name=queue, job_variables={"env": policy.to_env()},
                             tags=[f"priority:{priority}", f"{_ATTEMPT_TAG}1"], timeout=0,
                             as_subflow=False)
    assert isinstance(run, FlowRun)  # called from sync code, run_deployment does not dispatch async
    return SubmittedRun(id=str(run.id), name=run.name, deployment=deployment_name,
                        work_pool=pool, work_queue=queue, priority=rank)


def _or_not_ready(read: Callable[[], T], message: str) -> T:
    try:
        return read()
    except ObjectNotFound as exc:
        raise TrainingQueueNotReady(message) from exc


def requeue_with_backoff(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_failure`` hook: queue the next attempt of a failed (or timed-out) deployment run.

    The next attempt is a new run of the same deployment, with the same parameters, in the same
    work queue, scheduled ``retry_backoff * 2 ** (attempt - 1)`` (at most ``retry_backoff_max``)
    after the failure, carrying ``LOOPLINE_ATTEMPT + 1``; after ``retries`` retries nothing more
    is queued. A subflow (the pipeline's train or sweep) is not a queued run and is left alone:
    its parent fails with it.
    """
    logger = flow_run_logger(flow_run, flow)
    if flow_run.deployment_id is None:
        return
    policy, attempt = RunPolicy.from_env(os.environ)
    delay = policy.next_retry(attempt)
    if delay is None:
        logger.info("attempt %d of %d failed (%s); no retries left", attempt,
                    policy.retries + 1, state.name)
        return
    job_variables = dict(flow_run.job_variables or {})
    env = {**dict(job_variables.get("env") or {}), **policy.to_env(attempt + 1)}
    tags = [t for t in flow_run.tags if not t.startswith(_ATTEMPT_TAG)]
    when = datetime.now(UTC) + timedelta(seconds=delay)
    with prefect_client() as client:
        retry = client.create_flow_run_from_deployment(
            flow_run.deployment_id, parameters=dict(flow_run.parameters),
            state=Scheduled(scheduled_time=when), work_queue_name=flow_run.work_queue_name,
            job_variables={**job_variables, "env": env},
            tags=[*tags, f"{_ATTEMPT_TAG}{attempt + 1}"],
            # A hook that runs twice for one failure must not queue two retries.
            idempotency_key=f"loopline-retry-of-{flow_run.id}")
    logger.warning("attempt %d of %d failed (%s); attempt %d queued as %s in %r, starting in "
                   "%.1f s", attempt, policy.retries + 1, state.name, attempt + 1, retry.name,
                   flow_run.work_queue_name, delay)
