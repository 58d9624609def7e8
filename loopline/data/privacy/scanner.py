"""Scanning text columns for personal data, and masking it.

Presidio's recognizers cost tens of microseconds per cell (about a millisecond for phone
numbers), far too slow for millions of rows. So each column goes through two steps that
together give exactly what the recognizers find:

1. a vectorized prefilter in polars (Rust regex): one pass with the alternation of every
   entity's prefilter, then each entity's own prefilter on the few rows that passed. Each
   prefilter is a superset of what its recognizer keeps (see
   :mod:`loopline.data.privacy.recognizers`), so no finding is lost;
2. the recognizer itself on each candidate cell (each distinct value once per scan, across
   columns). A row-level verdict needs only whether a recognizer keeps anything, so phone
   numbers stop at the first region whose ``phonenumbers`` matcher matches
   (:func:`~loopline.data.privacy.recognizers.has_finding`); and many candidates are confirmed
   in forked worker processes on every core (:func:`_confirm`).

Phone numbers dominate the cost: each candidate (any run of 4 digits, so every card number,
IBAN or IP address too) costs ``phonenumbers`` up to 8 region passes, most of a millisecond.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence

import numpy as np
import polars as pl
import regex
from pydantic import BaseModel, ConfigDict

from loopline.data.privacy.recognizers import has_finding, prefilter, prepare, recognize


class ColumnFinding(BaseModel):
    """What a scan found in one text column.

    Attributes:
        column: the column's name.
        rows_scanned: its non-empty rows (nulls and empty strings are not scanned).
        entity_rows: per entity type found, the rows with at least one finding of it (types
            with no finding are left out).
        rows_with_findings: the rows with at least one finding of any type.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str
    rows_scanned: int
    entity_rows: dict[str, int]
    rows_with_findings: int

    @property
    def share(self) -> float:
        """The share of scanned rows with at least one finding (0 when nothing was scanned)."""
        return self.rows_with_findings / self.rows_scanned if self.rows_scanned else 0.0

    @property
    def entity_shares(self) -> dict[str, float]:
        """Each entity type's share of the scanned rows."""
        return {entity: (rows / self.rows_scanned if self.rows_scanned else 0.0)
                for entity, rows in self.entity_rows.items()}


def _gate(entities: Sequence[str]) -> str:
    """One regex matching wherever any of the entities' prefilters match."""
    return "|".join(f"(?:{prefilter(entity)})" for entity in entities)


def _candidates(series: pl.Series, pattern: str) -> np.ndarray:
    """Positions of the values the regex matches somewhere in (nulls never)."""
    matched = series.str.contains(pattern).fill_null(False)
    return np.flatnonzero(matched.to_numpy())


#: Distinct (entity, text) pairs a recognizer must confirm, weighted by cost (a phone-number
#: cell about 1, any other type about 1/20: see :func:`_cost`), above which a scan with
#: ``workers=None`` confirms them in worker processes. Below it a fork and its pickling cost
#: more than they save.
PARALLEL_MIN_COST = 250.0


def _cost(pairs: Sequence[tuple[str, str]]) -> float:
    """The rough cost of confirming the pairs, in phone-number cells (the expensive ones:
    ``phonenumbers`` parses each candidate once per region).
    """
    return sum(1.0 if entity == "PHONE_NUMBER" else 0.05 for entity, _ in pairs)


def _confirm_chunk(pairs: list[tuple[str, str]]) -> list[bool]:
    """A worker's share: whether the recognizer keeps a finding, per (entity, text)."""
    return [has_finding(text, entity) for entity, text in pairs]


def _pool_size(pairs: Sequence[tuple[str, str]], workers: int | None) -> int:
    """How many processes confirm the pairs (1: in this one)."""
    if workers is not None:
        return max(1, workers)
    if _cost(pairs) < PARALLEL_MIN_COST:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _confirm(pairs: list[tuple[str, str]], workers: int | None) -> list[bool]:
    """Per (entity, text) pair, whether its recognizer keeps a finding.

    Many pairs go to a pool of forked processes (see :data:`PARALLEL_MIN_COST`). Fork: the
    children inherit the recognizers and metadata that :func:`prepare` loads here, and run
    only ``phonenumbers``, Presidio's recognizers and ``regex`` (never polars, never anything
    holding a thread's lock). The pool lives for one scan: a scan rarely needs one, a
    long-lived pool would keep processes (copies of this one) around between scans, and forking
    at each scan copies the state of that moment. Where fork is not available (not Linux) or
    this process is a daemon (which may not have children), the pairs are confirmed here.
    """
    size = min(_pool_size(pairs, workers), len(pairs))
    forkable = (sys.platform.startswith("linux")
                and not multiprocessing.current_process().daemon)
    if size <= 1 or not forkable:
        return _confirm_chunk(pairs)
    # Every n-th pair to one chunk spreads the dear phone cells evenly over the chunks; two
    # chunks per process let one that finishes early take another.
    count = min(size * 2, len(pairs))
    chunks = [pairs[first::count] for first in range(count)]
    try:
        pool = multiprocessing.get_context("fork").Pool(size)
    except OSError:  # no memory or process slot for a fork: the same work, here
        return _confirm_chunk(pairs)
    with pool:
        results = pool.map(_confirm_chunk, chunks, chunksize=1)
        pool.close()
        pool.join()
    verdicts = [False] * len(pairs)
    for first, chunk in enumerate(results):
        verdicts[first::count] = chunk
    return verdicts


def _entity_rows_of(columns: Sequence[pl.Series], entities: Sequence[str],
                    workers: int | None) -> list[dict[str, np.ndarray]]:
    """Per column, per entity, the positions of the values where its recognizer keeps a
    finding (entities with none are left out).
    """
    gate = _gate(entities)
    # One select: polars runs the columns' gate passes on its threads side by side.
    gated_frame = pl.DataFrame(list(columns)).select(
        pl.all().str.contains(gate).fill_null(False))
    flagged: list[list[tuple[str, np.ndarray, list[str]]]] = []  # per column, per entity
    pairs: dict[tuple[str, str], None] = {}  # each distinct (entity, value) is confirmed once
    for series, gated_mask in zip(columns, gated_frame.iter_columns(), strict=True):
        gated = np.flatnonzero(gated_mask.to_numpy())
        per_entity = []
        if gated.size:
            subset = series.gather(gated)
            for entity in entities:
                positions = _candidates(subset, prefilter(entity))
                if positions.size == 0:
                    continue
                texts = subset.gather(positions).to_list()
                pairs.update(dict.fromkeys((entity, text) for text in texts))
                per_entity.append((entity, gated[positions], texts))
        flagged.append(per_entity)
    if not pairs:
        return [{} for _ in columns]
    prepare(entities)
    distinct = list(pairs)
    verdicts = dict(zip(distinct, _confirm(distinct, workers), strict=True))
    found: list[dict[str, np.ndarray]] = []
    for per_entity in flagged:
        rows: dict[str, np.ndarray] = {}
        for entity, positions, texts in per_entity:
            keep = np.fromiter((verdicts[entity, text] for text in texts), dtype=bool,
                               count=len(texts))
            if keep.any():
                rows[entity] = positions[keep].astype(np.int64)
        found.append(rows)
    return found


def _entity_rows(series: pl.Series, entities: Sequence[str],
                 workers: int | None = None) -> dict[str, np.ndarray]:
    """Per entity, the positions of the values where its recognizer keeps a finding."""
    return _entity_rows_of([series], entities, workers)[0] if entities else {}


def scan_frame(frame: pl.DataFrame, columns: Sequence[str] | None,
               entities: Sequence[str], *, workers: int | None = None) -> list[ColumnFinding]:
    """Scan text columns for personal data with Presidio's pattern recognizers.

    Args:
        frame: the rows to scan.
        columns: the columns to scan; None scans every String column. A named column that is
            not a String column is skipped (numbers, dates and the like are not free text).
        entities: the entity types to look for (Presidio's names, e.g. ``EMAIL_ADDRESS``).
        workers: processes confirming the candidate cells: None picks (this machine's cores
            when there are many, see :data:`PARALLEL_MIN_COST`, else this process only),
            1 keeps the work in this process, more forces a pool of that size (Linux only).
            The findings are the same either way.

    Returns:
        One finding per scanned column, in the frame's column order, even when nothing was
        found in it.
    """
    wanted = list(dict.fromkeys(entities))
    for entity in wanted:
        prefilter(entity)  # an unknown entity type fails before any work
    selected = None if columns is None else set(columns)
    series = [frame.get_column(name) for name in frame.columns
              if (selected is None or name in selected) and frame.schema[name] == pl.String]
    per_column = (_entity_rows_of(series, wanted, workers) if wanted and series
                  else [{} for _ in series])
    findings = []
    for column, per_entity in zip(series, per_column, strict=True):
        union = (np.unique(np.concatenate(list(per_entity.values())))
                 if per_entity else np.empty(0, dtype=np.int64))
        findings.append(ColumnFinding(
            column=column.name, rows_scanned=int((column.str.len_bytes() > 0).sum()),
            entity_rows={entity: int(rows.size) for entity, rows in per_entity.items()},
            rows_with_findings=int(union.size)))
    return findings


def _compiled(entity: str) -> regex.Pattern[str]:
    return _COMPILED.setdefault(entity, regex.compile(prefilter(entity)))


_COMPILED: dict[str, regex.Pattern[str]] = {}


def find_spans(text: str, entities: Sequence[str]) -> list[tuple[int, int, str]]:
    """The personal data in one text, as spans.

    Args:
        text: the text.
        entities: the entity types to look for.

    Returns:
        ``(start, end, entity)`` sorted by start, not overlapping: overlapping findings (of one
        type or several) are merged into one span named after the finding with the highest
        score (then the longest, then the first in ``entities``).
    """
    found: list[tuple[int, int, float, int, str]] = []
    for order, entity in enumerate(dict.fromkeys(entities)):
        if _compiled(entity).search(text) is None:
            continue
        found += [(start, end, score, order, entity)
                  for start, end, score in recognize(text, entity)]
    found.sort(key=lambda item: (item[0], -item[1]))
    spans: list[tuple[int, int, str]] = []
    best: tuple[float, int, int] | None = None  # (score, length, -order) of the span's name
    for start, end, score, order, entity in found:
        rank = (score, end - start, -order)
        if spans and start < spans[-1][1]:
            last_start, last_end, last_entity = spans[-1]
            if best is None or rank > best:
                best, last_entity = rank, entity
            spans[-1] = (last_start, max(last_end, end), last_entity)
        else:
            spans.append((start, end, entity))
            best = rank
    return spans


def mask_text(text: str, entities: Sequence[str]) -> str:
    """The text with each span of personal data replaced by ``<ENTITY>``.

    For example ``"mail jane@example.com"`` becomes ``"mail <EMAIL_ADDRESS>"``.
    """
    pieces = []
    cursor = 0
    for start, end, entity in find_spans(text, entities):
        pieces += [text[cursor:start], f"<{entity}>"]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def mask_series(series: pl.Series, entities: Sequence[str]) -> pl.Series:
    """A String series with every value masked as :func:`mask_text` does.

    Only the values the prefilters flag go through the recognizers; the others (and nulls)
    are returned as they are.
    """
    wanted = list(dict.fromkeys(entities))
    if not wanted or series.len() == 0:
        return series.clone()
    positions = _candidates(series, _gate(wanted))
    if positions.size == 0:
        return series.clone()
    masked = [mask_text(text, wanted) for text in series.gather(positions).to_list()]
    return series.clone().scatter(positions, pl.Series(masked, dtype=pl.String))
