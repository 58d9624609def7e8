"""The alert ledger: which alerts were sent when, so that identical alerts within the cooldown
are not repeated.

It is one SQLite file (``alerts.sqlite``) under a local folder, by default in the state folder.
Each claim reads and writes inside one ``BEGIN IMMEDIATE`` transaction, so any number of
processes (monitor runs overlapping, several workers) share one ledger: of two claims of the same
alert at the same moment exactly one wins.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from loopline.monitoring.alerting.alert import Alert

LEDGER_FILE = "alerts.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    fingerprint TEXT PRIMARY KEY,
    sent_at REAL NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    suppressed INTEGER NOT NULL DEFAULT 0
)
"""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlertLedger:
    """When each distinct alert (by
    :meth:`~loopline.monitoring.alerting.alert.Alert.fingerprint`) was last sent.

    Args:
        folder: a local folder; the ledger is ``<folder>/alerts.sqlite`` (created as needed).
        clock: the current time (aware); tests pass their own.
    """

    def __init__(self, folder: str | os.PathLike[str],
                 clock: Callable[[], datetime] = _utc_now) -> None:
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(os.fspath(folder), LEDGER_FILE)
        self._clock = clock
        connection = self._connect()
        try:
            connection.execute(_SCHEMA)
        finally:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE takes the write
        # lock before reading, which is what makes claim atomic across processes).
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None)

    def claim(self, alert: Alert, cooldown: timedelta) -> bool:
        """Record ``alert`` as sent now, unless an identical one was sent within ``cooldown``.

        Returns:
            True: send it (it is recorded). False: suppress it (its suppressed count grows).
        """
        now = self._clock().timestamp()
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute("SELECT sent_at FROM sent WHERE fingerprint = ?",
                                     (alert.fingerprint(),)).fetchone()
            if row is not None and now - row[0] < cooldown.total_seconds():
                connection.execute("UPDATE sent SET suppressed = suppressed + 1 WHERE fingerprint = ?",
                                   (alert.fingerprint(),))
                connection.execute("COMMIT")
                return False
            connection.execute(
                "INSERT OR REPLACE INTO sent (fingerprint, sent_at, kind, model, severity, title, "
                "suppressed) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (alert.fingerprint(), now, alert.kind, alert.model, alert.severity, alert.title))
            connection.execute("COMMIT")
            return True
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()

    def release(self, alert: Alert) -> None:
        """Forget that ``alert`` was sent (no channel took it), so the next identical one goes."""
        connection = self._connect()
        try:
            connection.execute("DELETE FROM sent WHERE fingerprint = ?", (alert.fingerprint(),))
        finally:
            connection.close()

    def last_sent(self, alert: Alert) -> datetime | None:
        """When an alert identical to ``alert`` was last sent; None if never (or released)."""
        row = self._row(alert)
        return None if row is None else datetime.fromtimestamp(row[0], UTC)

    def suppressed(self, alert: Alert) -> int:
        """How many identical alerts were suppressed since the last one sent."""
        row = self._row(alert)
        return 0 if row is None else row[1]

    def _row(self, alert: Alert) -> tuple[float, int] | None:
        connection = self._connect()
        try:
            row = connection.execute("SELECT sent_at, suppressed FROM sent WHERE fingerprint = ?",
                                     (alert.fingerprint(),)).fetchone()
        finally:
            connection.close()
        return None if row is None else (float(row[0]), int(row[1]))
