"""The personal-data scanner: Presidio's pattern recognizers behind a vectorized prefilter.

The prefilter path must find exactly what the recognizers find cell by cell (each entity's
prefilter is a superset of its recognizer's findings), every planted e-mail, phone number and
card number is found in its column and masked away, and nothing reaches the network.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import phonenumbers
import polars as pl
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.privacy.recognizers import (
    MIN_SCORE,
    SUPPORTED_ENTITIES,
    has_finding,
    prefilter,
    recognize,
    recognizer,
)
from loopline.data.privacy.scanner import (
    PARALLEL_MIN_COST,
    ColumnFinding,
    _pool_size,
    find_spans,
    mask_series,
    mask_text,
    scan_frame,
)
from loopline.spec.sections.privacy import DEFAULT_ENTITIES

ENTITIES: list[str] = list(DEFAULT_ENTITIES)
WORDS = ["the", "customer", "asked", "about", "delivery", "refund", "package", "arrived",
         "late", "please", "call", "back", "order", "missing", "item", "thanks", "great",
         "déjà", "vu", "straße", "naïve", "email", "phone", "card", "—", "ok!", "(again)"]

# --- planted values ---------------------------------------------------------------------------


def _luhn_complete(body: str) -> str:
    """``body`` with the check digit that makes it pass Luhn."""
    total = 0
    for index, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.from_regex(r"[a-z][a-z0-9]{1,8}(\.[a-z]{1,6})?", fullmatch=True))
    domain = draw(st.from_regex(r"[a-z]{3,10}", fullmatch=True))
    suffix = draw(st.sampled_from(["com", "org", "co.uk", "io", "de", "fr"]))
    return f"{local}@{domain}.{suffix}"


@st.composite
def phones(draw: st.DrawFn) -> str:
    """US and UK numbers in formats ``phonenumbers`` accepts (checked valid)."""
    kind = draw(st.sampled_from(["us_intl", "us_national", "uk"]))
    if kind == "uk":
        number = f"+44 20 7946 {draw(st.integers(0, 9999)):04d}"
        region = "GB"
    else:
        area = draw(st.sampled_from(["415", "212", "312", "617", "206"]))
        exchange = f"{draw(st.integers(2, 9))}{draw(st.integers(0, 99)):02d}"
        line = f"{draw(st.integers(0, 9999)):04d}"
        number = (f"+1 {area}-{exchange}-{line}" if kind == "us_intl"
                  else f"({area}) {exchange}-{line}")
        region = "US"
    parsed = phonenumbers.parse(number, region)
    if not phonenumbers.is_valid_number(parsed):  # e.g. a reserved exchange
        return "+1 415-555-2671"
    return number


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = "4" + "".join(str(d) for d in draw(st.lists(st.integers(0, 9), min_size=14,
                                                        max_size=14)))
    number = _luhn_complete(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(number[i:i + 4] for i in range(0, 16, 4))


PLANTERS = {"EMAIL_ADDRESS": emails(), "PHONE_NUMBER": phones(), "CREDIT_CARD": cards()}


@st.composite
def records(draw: st.DrawFn) -> tuple[pl.DataFrame, dict[str, str], dict[str, list[str]]]:
    """A frame of 4 free-text columns (plus a number column), some with planted values.

    Returns the frame, the planted entity per planted column, and the planted values.
    """
    rows = draw(st.integers(3, 12))
    kinds = draw(st.lists(st.sampled_from([None, *PLANTERS]), min_size=4, max_size=4))
    data: dict[str, list[str | None]] = {}
    planted: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for index, kind in enumerate(kinds):
        name = f"text{index}"
        column: list[str | None] = []
        for _ in range(rows):
            if draw(st.integers(0, 9)) == 0:
                column.append(draw(st.sampled_from([None, ""])))
                continue
            column.append(" ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1,
                                                 max_size=8))))
        if kind is not None:
            targets = draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows,
                                    unique=True))
            for row in targets:
                value = draw(PLANTERS[kind])
                words = (column[row] or "").split(" ")
                at = draw(st.integers(0, len(words)))
                column[row] = " ".join([*words[:at], value, *words[at:]]).strip()
                values.setdefault(name, []).append(value)
            planted[name] = kind
        data[name] = column
    data["amount"] = [float(i) for i in range(rows)]  # type: ignore[misc]
    schema = {name: pl.String for name in data} | {"amount": pl.Float64}
    return pl.DataFrame(data, schema=schema), planted, values


def reference_scan(frame: pl.DataFrame, entities: list[str]) -> list[ColumnFinding]:
    """The slow path: every recognizer on every non-empty cell of every String column, each
    through Presidio's own ``analyze`` (``recognize``; not the scan's ``has_finding``)."""
    out = []
    for name in frame.columns:
        if frame.schema[name] != pl.String:
            continue
        cells = frame.get_column(name).to_list()
        scanned = [text for text in cells if text]
        per_entity = {entity: sum(bool(recognize(text, entity)) for text in scanned)
                      for entity in entities}
        with_findings = sum(any(recognize(text, entity) for entity in entities)
                            for text in scanned)
        out.append(ColumnFinding(
            column=name, rows_scanned=len(scanned),
            entity_rows={entity: rows for entity, rows in per_entity.items() if rows},
            rows_with_findings=with_findings))
    return out


# --- the properties -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_planted_personal_data_is_found_in_its_column_and_masked_away(
        case: tuple[pl.DataFrame, dict[str, str], dict[str, list[str]]]) -> None:
    frame, planted, values = case
    findings = {finding.column: finding for finding in scan_frame(frame, None, ENTITIES)}

    assert set(findings) == {f"text{i}" for i in range(4)}  # the float column is not scanned
    for name, finding in findings.items():
        assert finding.rows_scanned == sum(1 for text in frame[name].to_list() if text)
        if name in planted:
            entity = planted[name]
            # Every planted value sits in its own row.
            assert finding.entity_rows.get(entity, 0) == len(values[name]), (name, finding)
            assert finding.share > 0
        else:
            assert finding.rows_with_findings == 0, (name, finding)
    # The prefilter path finds exactly what the recognizers find on every cell.
    assert scan_frame(frame, None, ENTITIES) == reference_scan(frame, ENTITIES)

    for name, planted_values in values.items():
        masked = mask_series(frame[name], ENTITIES)
        assert masked.null_count() == frame[name].null_count()
        text = "\n".join(value for value in masked.to_list() if value)
        for value in planted_values:
            assert value not in text
        assert f"<{planted[name]}>" in text


# Text made to trip the prefilters: digits (also Arabic-Indic and full-width), separators
# phonenumbers accepts, x (its extension marker), letters a case-insensitive class can confuse
# (the Kelvin sign, the long s), and the characters e-mails and IP addresses are made of.
ADVERSARIAL = st.text(
    alphabet=st.sampled_from(list("0123456789012345678901234567890123456789")
                             + list("٠١٢٣٤٥٦٧٨٩１２３") + list(" -.:/()+x X@#,;")
                             + list("abcdeFGHKLMNPRSTZ") + ["\u212a", "\u017f", "\n", "ー"]),
    min_size=1, max_size=40)

KNOWN = {  # one real-looking value each recognizer keeps
    "EMAIL_ADDRESS": "jane.doe@example.com", "PHONE_NUMBER": "+44 20 7946 0958",
    "CREDIT_CARD": "4111-1111-1111-1111", "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "2001:db8::8a2e:370:7334", "US_SSN": "078 05 1121",
    "UK_NINO": "AB 12 34 56 C", "ES_NIF": "12345678-Z", "IT_FISCAL_CODE": "RSSMRA85T10A562S",
    "IN_AADHAAR": "4991 1866 5246",
}


@settings(max_examples=150, deadline=None)
@given(ADVERSARIAL, st.sampled_from(sorted(KNOWN)), st.booleans())
def test_each_prefilter_matches_wherever_its_recognizer_finds_something(
        noise: str, planted: str, plant: bool) -> None:
    text = f"{noise[:20]} {KNOWN[planted]} {noise[20:]}" if plant else noise
    series = pl.Series([text])
    for entity in SUPPORTED_ENTITIES:
        found = bool(recognize(text, entity))
        # The scan's verdict per cell (the phone shortcut: first match of any region) is
        # Presidio's analyze, kept at MIN_SCORE.
        assert has_finding(text, entity) is found, (entity, text)
        if found:
            assert regex.search(prefilter(entity), text), (entity, text)
            assert series.str.contains(prefilter(entity)).item(), (entity, text)
    frame = pl.DataFrame({"text": [text, noise, None]})
    assert (scan_frame(frame, ["text"], list(SUPPORTED_ENTITIES))
            == reference_scan(frame, list(SUPPORTED_ENTITIES)))


def test_every_known_value_is_found_and_the_threshold_drops_the_very_weak_guesses() -> None:
    for entity, value in KNOWN.items():
        assert recognize(f"see {value} here", entity), entity
    # A bare 9-digit number is Presidio's "very weak" SSN (0.05): below the minimum score.
    assert not recognize("ticket 123456780 closed", "US_SSN")
    # A card number failing Luhn and an IBAN failing mod-97 are invalidated by Presidio.
    assert not recognize("card 4111 1111 1111 1112", "CREDIT_CARD")
    assert not recognize("iban DE89 3704 0044 0532 0130 01", "IBAN_CODE")


# --- the scan's details -------------------------------------------------------------------------


def test_a_scan_counts_non_empty_rows_and_skips_other_types() -> None:
    frame = pl.DataFrame({
        "note": ["mail a.b@example.org now", None, "", "call (415) 555-2671 or a.b@example.org",
                 "nothing here"],
        "count": [1, 2, 3, 4, 5],
        "when": pl.Series([None] * 5, dtype=pl.Date),
    })
    [finding] = scan_frame(frame, None, ENTITIES)
    assert finding.column == "note"
    assert finding.rows_scanned == 3
    assert finding.entity_rows == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
    assert finding.rows_with_findings == 2
    assert finding.share == pytest.approx(2 / 3)
    assert finding.entity_shares == {"EMAIL_ADDRESS": pytest.approx(2 / 3),
                                     "PHONE_NUMBER": pytest.approx(1 / 3)}
    assert scan_frame(frame, ["count"], ENTITIES) == []
    [empty] = scan_frame(pl.DataFrame({"note": [None, ""]}, schema={"note": pl.String}),
                         None, ENTITIES)
    assert (empty.rows_scanned, empty.share, empty.entity_rows) == (0, 0.0, {})
    with pytest.raises(ValueError, match="no recognizer for entity type 'NAME'"):
        scan_frame(frame, None, ["NAME"])



def _mixed_frame(rows: int) -> pl.DataFrame:
    """Rows of noise around each KNOWN value, near-misses (a failing Luhn digit, a bare
    9-digit number), numbers that are not phones, and empty cells, in two text columns."""
    values = [*KNOWN.values(), "4111 1111 1111 1112", "123456780", "10.1.2.3", "+1 415-555-2671",
              "0049 30 1234567", "ref 2024-11-05", "call 020 7946 0958 x12", "", None]
    column = [None if values[i % len(values)] is None
              else f"{WORDS[i % len(WORDS)]} {values[i % len(values)]} #{i}" for i in range(rows)]
    return pl.DataFrame({"a": column, "b": column[::-1]}, schema={"a": pl.String, "b": pl.String})


def test_worker_processes_find_what_one_process_and_the_recognizers_find() -> None:
    frame = _mixed_frame(90)
    serial = scan_frame(frame, None, list(SUPPORTED_ENTITIES), workers=1)
    assert serial == reference_scan(frame, list(SUPPORTED_ENTITIES))
    assert serial[0].entity_rows.get("PHONE_NUMBER", 0) > 0
    assert scan_frame(frame, None, list(SUPPORTED_ENTITIES), workers=2) == serial
    # A Prefect task runs in a worker thread: forking from one works the same.
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        assert threads.submit(scan_frame, frame, None, list(SUPPORTED_ENTITIES),
                              workers=2).result() == serial
    # workers=None forks only for enough (phone) work, and then uses every core.
    few = [("PHONE_NUMBER", f"call {i:06d}") for i in range(int(PARALLEL_MIN_COST) - 1)]
    many = [*few, ("PHONE_NUMBER", "one more")]
    assert _pool_size(few, None) == 1
    assert _pool_size(many, None) == len(os.sched_getaffinity(0))
    assert _pool_size([("EMAIL_ADDRESS", "x")] * int(PARALLEL_MIN_COST), None) == 1
    assert _pool_size(many, 1) == 1
    # The phone shortcut holds only while a phone number's score reaches the minimum.
    assert recognizer("PHONE_NUMBER").SCORE >= MIN_SCORE  # type: ignore[attr-defined]


def test_masking_replaces_each_span_and_merges_overlaps() -> None:
    text = "write to jane@example.com, card 4111 1111 1111 1111 (thanks)"
    assert mask_text(text, ENTITIES) == "write to <EMAIL_ADDRESS>, card <CREDIT_CARD> (thanks)"
    assert mask_text("no personal data", ENTITIES) == "no personal data"
    # An IBAN whose digits are also a phone-like run: one span, named by the higher score.
    spans = find_spans("iban DE89 3704 0044 0532 0130 00 end", ENTITIES)
    assert [entity for _, _, entity in spans] == ["IBAN_CODE"]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    series = pl.Series(["a jane@example.com b", None, "plain"])
    assert mask_series(series, ENTITIES).to_list() == ["a <EMAIL_ADDRESS> b", None, "plain"]
    assert mask_series(pl.Series([], dtype=pl.String), ENTITIES).to_list() == []


def test_email_validation_never_touches_the_network() -> None:
    # A fresh interpreter (the extractor loads its suffix list on first use) where any socket
    # connection fails loudly, and no tldextract cache folder to read a list from.
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise AssertionError(f"network touched: {args!r}")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from loopline.data.privacy.recognizers import recognize
        assert recognize("write to jane.doe@example.co.uk", "EMAIL_ADDRESS")
        assert not recognize("write to jane.doe@example.invalidtld", "EMAIL_ADDRESS")
        print("offline ok")
    """)
    env = {**os.environ, "TLDEXTRACT_CACHE": "/nonexistent/tldextract",
           "XDG_CACHE_HOME": "/nonexistent/cache"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "offline ok" in done.stdout


def test_the_benchmark_runs_at_its_quick_size() -> None:
    from bench.privacy import run

    entries = run(quick=True, command="python -m bench privacy --quick")
    item = entries["privacy.scan_rows_per_s"]
    assert item["loopline"] > 0 and item["peer"] > 0
    assert item["findings_equal"] is True
    assert isinstance(item["meets_goal"], bool)
    assert np.isclose(item["advantage"], item["loopline"] / item["peer"], rtol=0.02)
