"""``privacy.scan_rows_per_s``: scanning 1M rows x 3 free-text columns for personal data.

loopline's ``scan_frame`` (a vectorized polars prefilter per entity type, then Presidio's
recognizers on the candidate cells only) against Presidio's own engine doing the same job:
``BatchAnalyzerEngine`` over an ``AnalyzerEngine`` with the ``NoOpNlpEngine`` (no spaCy model)
and a registry holding exactly the recognizers loopline uses (the offline e-mail recognizer
included), ``score_threshold`` = loopline's ``MIN_SCORE``, the default entity types. Presidio
analyzes every cell, so it runs on a sub-sample (the first 20,000 rows; the figure is rows/s
either way). The run fails unless both sides find the same entity types in the same rows of
the sub-sample (``findings_equal``).

The text is short free text (support-ticket style sentences from a vocabulary, some with small
numbers) with about 1% of rows carrying a planted e-mail, phone number, card number, IBAN, IP
address or SSN in one of the three columns. Cells with runs of 4 or more digits are phone
candidates (``phonenumbers`` accepts 4-digit numbers in some regions) and each costs a
``phonenumbers`` match in up to 8 regions (most of a millisecond; loopline spreads them over
worker processes on every core): ``phone_candidate_cells`` is recorded beside the figure, and
text heavy with long numbers scans far slower.

Both sides run in this process, alternating, after one untimed warm-up each (Presidio's import
and recognizer construction are not timed).
"""

from __future__ import annotations

import statistics
import sys
import time
from importlib.metadata import version
from typing import Any

import numpy as np
import polars as pl

from bench.results import entry, load_average

WORKLOAD = "privacy.scan_rows_per_s"
FULL_ROWS = 1_000_000
QUICK_ROWS = 5_000
PEER_ROWS = 20_000
QUICK_PEER_ROWS = 500
REPEATS = 3
GOAL_ROWS_PER_S = 200_000
COLUMNS = ("subject", "comment", "agent_note")
PII_SHARE = 0.01

_OPENINGS = ["customer says", "client asked about", "follow up on", "complaint about",
             "question regarding", "note:", "update on", "re:", "please check", "escalated:"]
_TOPICS = ["the late delivery", "a missing item", "the refund", "a damaged box",
           "the wrong size", "billing", "the return label", "an account login problem",
           "the subscription", "the invoice", "a broken zipper", "the warranty"]
_ENDINGS = ["thanks", "resolved", "waiting for reply", "needs a manager", "sent apology",
            "no action", "closed", "see previous ticket", "urgent", "will call back",
            "within 3 days", "2 items affected", "after 10 days", "customer happy again"]


def _luhn(body: str) -> str:
    total = 0
    for index, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


def _planted(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return f"user{int(rng.integers(1, 10**6))}@example{int(rng.integers(1, 50))}.com"
    if kind == 1:
        return f"+1 415-{int(rng.integers(200, 1000))}-{int(rng.integers(0, 10000)):04d}"
    if kind == 2:
        number = _luhn("4" + "".join(str(d) for d in rng.integers(0, 10, 14)))
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))
    if kind == 3:
        return "DE89 3704 0044 0532 0130 00"
    if kind == 4:
        return f"10.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}.7"
    return f"{int(rng.integers(100, 600))}-{int(rng.integers(10, 100))}-{int(rng.integers(1000, 10000))}"


def frame(rows: int, seed: int = 7) -> pl.DataFrame:
    """``rows`` rows of 3 free-text columns, about 1% of rows with planted personal data."""
    rng = np.random.default_rng(seed)
    data: dict[str, list[str]] = {}
    for name in COLUMNS:
        parts = [np.asarray(words)[rng.integers(0, len(words), rows)].tolist()
                 for words in (_OPENINGS, _TOPICS, _ENDINGS)]
        data[name] = [f"{a} {b}, {c}" for a, b, c in zip(*parts, strict=True)]
    planted_rows = np.flatnonzero(rng.random(rows) < PII_SHARE)
    for row in planted_rows.tolist():
        name = COLUMNS[int(rng.integers(0, len(COLUMNS)))]
        data[name][row] = f"{data[name][row]} contact {_planted(rng)}"
    return pl.DataFrame(data)


def _peer_engine(entities: list[str]) -> Any:
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    from loopline.data.privacy.recognizers import recognizer

    registry = RecognizerRegistry(supported_languages=["en"])
    for entity in entities:
        registry.add_recognizer(recognizer(entity))
    # The no-op NLP engine loads no model: Presidio's own way to run pattern recognizers only.
    no_model = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    engine = AnalyzerEngine(registry=registry, nlp_engine=no_model, supported_languages=["en"])
    return BatchAnalyzerEngine(analyzer_engine=engine)


def _peer_rows(engine: Any, sample: pl.DataFrame, entities: list[str]) -> dict[str, Any]:
    """Presidio on every cell: per column, entity type -> row numbers with a finding."""
    from loopline.data.privacy.recognizers import MIN_SCORE

    found: dict[str, dict[str, set[int]]] = {}
    for name in sample.columns:
        texts = [text or "" for text in sample[name].to_list()]
        results = engine.analyze_iterator(texts, language="en", entities=entities,
                                          score_threshold=MIN_SCORE)
        per_entity: dict[str, set[int]] = {}
        for row, row_results in enumerate(results):
            for result in row_results:
                per_entity.setdefault(result.entity_type, set()).add(row)
        found[name] = per_entity
    return found


def _loopline_rows(sample: pl.DataFrame, entities: list[str]) -> dict[str, Any]:
    """loopline's prefilter path on the sample, as the same structure (rows per entity)."""
    from loopline.data.privacy.scanner import _entity_rows

    return {name: {entity: set(rows.tolist())
                   for entity, rows in _entity_rows(sample[name], entities).items()}
            for name in sample.columns}


def _time_loopline(data: pl.DataFrame, entities: list[str]) -> tuple[float, Any]:
    from loopline.data.privacy.scanner import scan_frame

    started = time.perf_counter()
    findings = scan_frame(data, None, entities)
    return time.perf_counter() - started, findings


def _time_peer(engine: Any, sample: pl.DataFrame, entities: list[str]) -> float:
    started = time.perf_counter()
    _peer_rows(engine, sample, entities)
    return time.perf_counter() - started


def run(quick: bool, command: str) -> dict[str, dict[str, Any]]:
    """Both sides on the same rows; the entry of ``privacy.scan_rows_per_s``."""
    from loopline.data.privacy.recognizers import MIN_SCORE, prefilter
    from loopline.spec.sections.privacy import DEFAULT_ENTITIES

    load = load_average()
    rows = QUICK_ROWS if quick else FULL_ROWS
    peer_rows = QUICK_PEER_ROWS if quick else PEER_ROWS
    repeats = 1 if quick else REPEATS
    entities = [str(entity) for entity in DEFAULT_ENTITIES]
    data = frame(rows)
    sample = data.head(peer_rows)
    engine = _peer_engine(entities)

    # Warm-up (imports, recognizers, compiled regexes) and the check that both find the same.
    ours, theirs = _loopline_rows(sample, entities), _peer_rows(engine, sample, entities)
    findings_equal = ours == theirs
    if not findings_equal:
        raise AssertionError(f"loopline and Presidio disagree on the sample: {ours} != {theirs}")
    _time_loopline(data.head(1000), entities)

    loopline_runs: list[float] = []
    peer_runs: list[float] = []
    findings = None
    for repeat in range(repeats):
        order = ("loopline", "peer") if repeat % 2 == 0 else ("peer", "loopline")
        for side in order:
            if side == "loopline":
                seconds, findings = _time_loopline(data, entities)
                loopline_runs.append(rows / seconds)
            else:
                peer_runs.append(peer_rows / _time_peer(engine, sample, entities))
            figure = (loopline_runs if side == "loopline" else peer_runs)[-1]
            print(f"[privacy] {side}: {figure:,.0f} rows/s", file=sys.stderr, flush=True)
    median = statistics.median(loopline_runs)
    phone = prefilter("PHONE_NUMBER")
    candidates = int(sum(data[name].str.contains(phone).sum() for name in COLUMNS))
    item = entry(
        loopline_runs=loopline_runs, peer_runs=peer_runs, unit="rows/s", higher_is_better=True,
        peer_name=(f"presidio-analyzer {version('presidio-analyzer')} BatchAnalyzerEngine "
                   f"(NoOpNlpEngine, same recognizers) on the first {peer_rows:,} rows"),
        rows=rows, command=command, load_avg_1m_at_start=load, digits=0,
        columns=len(COLUMNS), entities=entities, min_score=MIN_SCORE,
        goal_rows_per_s=GOAL_ROWS_PER_S, meets_goal=bool(median >= GOAL_ROWS_PER_S),
        loopline_seconds=round(rows / median, 3), peer_rows=peer_rows,
        findings_equal=findings_equal, phone_candidate_cells=candidates,
        findings=[finding.model_dump() for finding in findings or []])
    return {WORKLOAD: item}
