"""Every error loopline raises derives from :class:`LooplineError`.

Errors are named for what happened. Those that can reach an HTTP client carry ``http_status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LooplineError(Exception):
    """Base class of every loopline error."""

    http_status: int = 500


@dataclass(frozen=True)
class SpecProblem:
    """One problem found in a spec: where it is, what is wrong, and how to fix it.

    Attributes:
        path: the dotted path in the YAML document, e.g. ``training.sweep.n_trials``.
        message: what is wrong.
        fix: how to fix it.
        line: the 1-based line in the YAML file, where known.
    """

    path: str
    message: str
    fix: str
    line: int | None = None

    def render(self, file: str | None = None) -> str:
        """One human-readable line, e.g. ``demo.yaml:12: training.metric: ... (fix: ...)``."""
        where = file or "<spec>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.path or '<root>'}: {self.message}\n    fix: {self.fix}"


class InvalidSpec(LooplineError):
    """A spec file failed validation; carries every problem found, not only the first."""

    http_status = 422

    def __init__(self, file: str | None, problems: list[SpecProblem]) -> None:
        self.file = file
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"{file or '<spec>'}: {len(problems)} {noun}"]
        lines += [problem.render(file) for problem in problems]
        super().__init__("\n".join(lines))


class DataSourceError(LooplineError):
    """The data source cannot be read (missing file, unknown format, unreadable bytes)."""


class FeatureComputationError(LooplineError):
    """A feature expression failed while materializing the feature set."""


class FeatureSetNotFound(LooplineError):
    """No materialized version of the feature set exists (or not the one asked for)."""

    http_status = 404


class FeatureNotFound(LooplineError):
    """No feature of that name is registered."""

    http_status = 404


class FeatureVersionNotFound(LooplineError):
    """The feature exists, but not in the version asked for."""

    http_status = 404


class PointInTimeJoinUnavailable(LooplineError, ValueError):
    """A point-in-time join was asked of a feature set that lacks what it matches rows by: an
    entity id (``data.entity_id``) or an event time (``data.event_time``).
    """

    http_status = 422


class DuplicateFeature(LooplineError):
    """``create_feature`` on a name that is already registered (use ``update_feature``)."""

    http_status = 409


class InvalidFeatureDefinition(LooplineError):
    """A feature's name, expression or dtype is not valid."""

    http_status = 422


class MissingCredentials(LooplineError):
    """Storage on S3 was configured without credentials (and none are in the environment)."""

    http_status = 401


class InvalidSettings(LooplineError):
    """A scale-out setting (a ``LOOPLINE_*`` environment variable) holds a value it cannot take."""


class DataValidationFailed(LooplineError):
    """The source failed the spec's data checks; the batch was quarantined.

    Attributes:
        report: the checks and their results.
        quarantine_uri: where the failing batch and its report were written.
    """

    http_status = 422

    def __init__(self, message: str, report: object, quarantine_uri: str | None) -> None:
        super().__init__(message)
        self.report = report
        self.quarantine_uri = quarantine_uri


class ProductionDataError(LooplineError):
    """Labelled production traffic cannot join the source's rows: a label or a served feature
    value does not convert to the column's type, or a feature is missing from the served records.
    """

    http_status = 422


class TrainingError(LooplineError):
    """Training a candidate failed."""


class ModelNotFound(LooplineError):
    """The model (or the version, alias or stage asked for) is not in the registry."""

    http_status = 404


class IncompleteModelCard(LooplineError):
    """A model card lacks a field that registration requires."""

    http_status = 422


class ModelCardNotApproved(LooplineError):
    """A model may not become champion (PRODUCTION) without an approved model card."""

    http_status = 409


class InvalidStageTransition(LooplineError):
    """The requested stage change is not allowed from the version's current stage."""

    http_status = 409


class NoApprovalPending(LooplineError):
    """No flow run waits for a decision on that model version (none is paused for its approval,
    or the wait already ended: decided, timed out or cancelled).
    """

    http_status = 404


class PermissionDenied(LooplineError):
    """An identity may not do what it asked: MLflow's permissions refused it (401: unknown or
    wrong credentials; 403: not allowed on the model), or loopline's own release rule did (only
    the spec's approvers or its automation identity move the production alias).

    Attributes:
        identity: who asked.
        action: what they asked to do, e.g. ``promote v3 to PRODUCTION``.
        model: the registered model it concerned, where known.
    """

    http_status = 403

    def __init__(self, message: str, *, identity: str = "", action: str = "", model: str = "",
                 http_status: int = 403) -> None:
        super().__init__(message)
        self.identity, self.action, self.model = identity, action, model
        self.http_status = http_status


class InvalidFeatureValue(LooplineError):
    """A feature value the model cannot take (e.g. a number that, standardized, exceeds float32):
    the request's fault, answered with 400.
    """

    http_status = 400


class ModelCallFailed(LooplineError):
    """The served model failed to answer (no other variant could answer instead)."""


class InvalidRoutingChange(LooplineError):
    """A routing change the served Bento cannot make (a challenger share without a challenger)."""

    http_status = 400


class PackagingError(LooplineError):
    """Building the Bento for a model version failed."""


class BatchCheckpointMismatch(LooplineError):
    """The output folder holds the output of another job (input, model or chunk size)."""

    http_status = 409


class BatchChunkFailed(LooplineError):
    """Reading, scoring or writing a chunk failed; the chunks before it are checkpointed.

    Attributes:
        chunk: the chunk that failed.
        chunks_done: chunks checkpointed (0 to ``chunks_done - 1``); a rerun resumes after them.
        rows_done: rows in those chunks.
    """

    def __init__(self, message: str, chunk: int, chunks_done: int, rows_done: int) -> None:
        super().__init__(message)
        self.chunk, self.chunks_done, self.rows_done = chunk, chunks_done, rows_done

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its fields, so it survives Prefect's result serialization.
        return type(self), (str(self), self.chunk, self.chunks_done, self.rows_done)


class AlertDeliveryFailed(LooplineError):
    """An alert did not reach a channel after every try. Recorded on the channel's
    :class:`~loopline.monitoring.alerting.alert.Delivery` (``delivery.failure``) and logged,
    never raised by ``deliver``: one failing channel stops neither the caller nor the other
    channels.

    Attributes:
        channel: the channel's kind (``slack``, ``webhook``, ``log``).
        target: where it was sent (the Slack channel, the webhook URL, ``log``).
        attempts: how many tries were made.
        error: the last try's error.
    """

    def __init__(self, message: str, channel: str, target: str, attempts: int, error: str) -> None:
        super().__init__(message)
        self.channel, self.target, self.attempts, self.error = channel, target, attempts, error

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.channel, self.target, self.attempts, self.error)


class InsufficientData(LooplineError):
    """Too little data to decide on drift: fewer rows (or values of a feature) than the spec's
    ``min_samples``. No verdict is given, neither drift nor its absence.

    Attributes:
        needed: the least number of rows (and values per feature) required.
        reference_rows: rows in the reference.
        current_rows: rows in the current window.
        features: the features with too few values (empty when whole frames are too small).
    """

    http_status = 422

    def __init__(self, message: str, *, needed: int, reference_rows: int, current_rows: int,
                 features: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.needed, self.reference_rows, self.current_rows = needed, reference_rows, current_rows
        self.features = features

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its fields, so it survives Prefect's result serialization.
        return _rebuild_insufficient_data, (str(self), self.needed, self.reference_rows,
                                            self.current_rows, self.features)


def _rebuild_insufficient_data(message: str, needed: int, reference_rows: int, current_rows: int,
                               features: tuple[str, ...]) -> InsufficientData:
    return InsufficientData(message, needed=needed, reference_rows=reference_rows,
                            current_rows=current_rows, features=features)


class InvalidRunPolicy(LooplineError):
    """A queued run's policy (its ``LOOPLINE_RETRIES`` / ``LOOPLINE_RUN_TIMEOUT_S`` / ... job
    variables, see :mod:`loopline.training.queueing`) holds a value it cannot take.
    """


class TrainingQueueNotReady(LooplineError):
    """The deployment, work pool or priority queue a training run needs is missing or set up
    differently (run ``loopline work-pools``, then ``prefect deploy --all``).
    """

    http_status = 409


class PrefectApiUnreachable(LooplineError):
    """The Prefect API (``PREFECT_API_URL``) did not answer."""

    http_status = 503


class LiveStateUnavailable(LooplineError):
    """The shared live state (``LOOPLINE_SERVING_STATE``'s PostgreSQL) could not be reached, even
    after reconnecting once.
    """

    http_status = 503


class AuditWriteFailed(LooplineError):
    """An audit record could not be written (the audit location, ``LOOPLINE_AUDIT_URI``, is not
    writable or not reachable). The change it describes must not pass unrecorded.
    """

    http_status = 503


class SignatureInvalid(LooplineError):
    """A registered version's artifact files do not match its signature (a file changed, added or
    removed since it was registered, or signed with another key): it is not loaded.
    """

    http_status = 409


class ModelNotSigned(SignatureInvalid):
    """A registered version carries no signature (registered before signing, or its signature tag
    was removed): it is not loaded. Sign it with ``loopline sign MODEL VERSION`` if its files are
    trusted.
    """


class PersonalDataFound(DataValidationFailed):
    """Detection found personal data in a source column whose ``data.privacy`` action is
    ``refuse``: the batch was quarantined, as a failed data check's is.

    Attributes:
        report: the refusal as data checks (one failed ``personal_data`` check per column).
        quarantine_uri: where the batch and its report were written.
        columns: the refused columns, each with the entity types found and their shares.
    """

    def __init__(self, message: str, report: object, quarantine_uri: str | None,
                 columns: dict[str, dict[str, float]]) -> None:
        super().__init__(message, report, quarantine_uri)
        self.columns = columns


class PrivacyKeyMissing(LooplineError):
    """The key of ``data.privacy``'s ``hash`` action cannot be read (not set, unreadable, too
    short), or is not the key a feature set or model was hashed with. Never replaced by a
    default: the message says how to create it.
    """

    http_status = 500
