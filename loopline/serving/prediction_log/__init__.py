"""The prediction log: every answer the service gives (and every shadow answer it computes) appended
to parquet files that monitoring reads, and the feedback (labels, rewards) that joins to it.

Layout under the storage root (a local folder or ``s3://bucket/prefix``)::

    predictions/date=YYYY-MM-DD/<writer_id>-<seq:08d>.parquet
    feedback/date=YYYY-MM-DD/<writer_id>-<seq:08d>.parquet

The date is each record's own UTC timestamp, so one flush may write several files. Every writer
has its own id (a uuid4 hex by default, renewed in a forked child), so any number of threads and
processes write into one folder without colliding. Files are never rewritten except by a retry of
a failed write, which reuses the failed name with a superset of its records: a reader never sees a
record twice. Local files appear whole (written beside, then ``os.replace``); S3 PUTs are atomic.

A prediction keeps two structs: ``features``, the values the model was given, and ``inputs``, the
raw record the caller sent (source columns) when the service computed the features itself. A row
logged without inputs (the caller sent features) has a null ``inputs``, as does every row of a file
written before the column existed, so old and new files read together.

Typing rule for the columns whose type the model decides (``prediction``, ``label`` and every
field of the ``features`` and ``inputs`` structs): a column takes the one type its non-null values
share (bool, int, float or str); ints mixed with floats become floats; any other mix becomes
strings (polars' own cast: ``True`` → ``"true"``). Values that are not scalars (lists, dicts,
datetimes) are kept as their JSON text. The rule applies to each written batch and again, across
files, when reading. A feature (or input) missing from a request reads back as null.
"""

from loopline.serving.prediction_log.reader import join_feedback, read_feedback, read_predictions
from loopline.serving.prediction_log.records import (
    FEEDBACK_FOLDER,
    PREDICTIONS_FOLDER,
    FeedbackRecord,
    PredictionRecord,
    unify_dtypes,
)
from loopline.serving.prediction_log.writer import FeedbackLogWriter, PredictionLogWriter

__all__ = [
    "FEEDBACK_FOLDER", "PREDICTIONS_FOLDER", "FeedbackLogWriter", "FeedbackRecord", "PredictionLogWriter",
    "PredictionRecord", "join_feedback", "read_feedback", "read_predictions", "unify_dtypes",
]
