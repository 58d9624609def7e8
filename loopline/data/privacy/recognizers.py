"""Presidio's pattern recognizers for the entity types ``data.privacy`` names, and a prefilter
per type that is a proven superset of what its recognizer keeps.

Only recognizer classes are used: no ``AnalyzerEngine`` (its NLP engine would load a spaCy
model), no download. Each recognizer applies its own patterns, checksums (Luhn for cards, mod-97
for IBANs, Verhoeff for Aadhaar, the NIF letter), invalidation (SSN groups, ``ipaddress``) and,
for phones, the ``phonenumbers`` library. Context words are not applied: Presidio applies them in
the ``AnalyzerEngine`` from the NLP engine's lemmas, which this deliberately does not run.

A finding counts when its score is at least :data:`MIN_SCORE` (0.4): whatever a recognizer
validated (score 1.0), phone numbers that ``phonenumbers`` accepts as valid for a region (0.4),
IP addresses (0.6), SSNs written with separators and UK NINOs (0.5). Dropped are Presidio's
"very weak" guesses (a bare 9-digit number as an SSN at 0.05, ``::`` as an IP address at 0.1)
and Italian fiscal codes whose check letter is wrong (0.3): they would flag order numbers and
the like in almost any text column.

Presidio is imported on first use, not with this module (importing it takes seconds: it pulls
in spaCy, though no model is loaded).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presidio_analyzer import EntityRecognizer

#: The lowest score a finding needs to count (see the module's docstring).
MIN_SCORE = 0.4

_LOCK = threading.Lock()


def _phone_min_digits() -> int:
    """The fewest digits any number ``phonenumbers`` calls valid has, in any region.

    A valid number's national significant number must have one of its type's possible lengths
    (``_is_number_matching_desc``); every digit of it comes from the matched text (a country
    code only adds digits), so a text with fewer digits in one phone-like run holds no phone
    number. Computed from the library's metadata, so it follows the installed version.
    """
    from phonenumbers import PhoneMetadata
    from phonenumbers.phonenumberutil import (
        COUNTRY_CODES_FOR_NON_GEO_REGIONS,
        SUPPORTED_REGIONS,
        PhoneNumberType,
        _number_desc_by_type,
    )

    metadata = [PhoneMetadata.metadata_for_region(region) for region in SUPPORTED_REGIONS]
    metadata += [PhoneMetadata.metadata_for_nongeo_region(code)
                 for code in COUNTRY_CODES_FOR_NON_GEO_REGIONS]
    types = [value for name, value in vars(PhoneNumberType).items()
             if name.isupper() and name not in ("UNKNOWN", "FIXED_LINE_OR_MOBILE")]
    shortest = 17
    for region in metadata:
        if region is None:
            continue
        for number_type in types:
            desc = _number_desc_by_type(region, number_type)
            if desc is None or desc.national_number_pattern is None:
                continue
            general = region.general_desc.possible_length if region.general_desc else ()
            lengths = [n for n in (desc.possible_length or general) if n > 0]
            # A type with a pattern but no lengths anywhere would bound nothing: assume 1.
            shortest = min(shortest, min(lengths) if lengths else 1)
    return shortest


def _phone_prefilter() -> str:
    """A regex matching every text in which PhoneRecognizer can find a number.

    ``phonenumbers``' matcher only tries candidates of its ``_PATTERN``: blocks of digits joined
    by at most 4 characters of its punctuation class (spaces, dashes, dots, brackets, slashes,
    ``x`` and a few others), a lead character and an extension after them. A valid number's
    digits all lie in one such run, so a run of at least :func:`_phone_min_digits` digits, each
    gap at most 4 characters that are not letters or digits (or are the letters of that
    punctuation class), is a superset. Letters never become digits here: the matcher's "valid"
    leniency refuses any ``x`` that is not an extension marker, and extensions are stripped
    before the digits are read.
    """
    from phonenumbers import phonenumberutil

    letters = sorted({variant for char in phonenumberutil._VALID_PUNCTUATION if char.isalpha()
                      for variant in (char, char.lower(), char.upper())})
    gap = r"(?:[^\p{L}\p{Nd}]|[" + "".join(letters) + "])"
    return r"\p{Nd}(?:" + gap + r"{0,4}\p{Nd}){" + str(_phone_min_digits() - 1) + "}"


#: Per entity type, a regex (valid for both polars' Rust engine and Python's ``regex``) that
#: matches every text where the recognizer keeps a finding of at least MIN_SCORE: the
#: recognizer's own pattern with its look-arounds and word boundaries dropped (they only
#: restrict) and case-insensitive letter classes widened to any letter (``\p{L}``: under
#: IGNORECASE a class such as ``[A-Z]`` also matches the Kelvin sign or the long s).
_STATIC_PREFILTERS: dict[str, str] = {
    # The pattern needs a literal "@".
    "EMAIL_ADDRESS": "@",
    # 4 digits, then groups of 3-4, 3-4 and 3-5 digits, each optionally after "-" or " ".
    "CREDIT_CARD": r"\p{Nd}{4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3,4}[- ]?\p{Nd}{3,5}",
    # Case-sensitive (no IGNORECASE in IbanRecognizer's flags): 2 letters, 2 digits, 2 groups.
    "IBAN_CODE": r"[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2}",
    # IPv4 (also inside the mapped/embedded forms) has a dotted quad; every IPv6 form has "::"
    # or, written in full, two groups each followed by ":".
    "IP_ADDRESS": (r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
                   r"|::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:"),
    # Only "SSN5 (medium)" (0.5) can reach MIN_SCORE: the others score 0.05 and SSNs have no
    # validation that raises a score.
    "US_SSN": r"[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}",
    "UK_NINO": r"\p{L}{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?\p{L}",
    "ES_NIF": r"[0-9]{7}-?\p{L}",
    # 6 letters, 2 digits-or-letters, a letter, 2, a letter, 3, a letter (omocodia lets the
    # digit positions hold letters).
    "IT_FISCAL_CODE": (r"\p{L}{6}[\p{L}\p{Nd}]{2}\p{L}[\p{L}\p{Nd}]{2}\p{L}"
                       r"[\p{L}\p{Nd}]{3}\p{L}"),
    "IN_AADHAAR": r"[0-9]{4}[- :]?[0-9]{4}[- :]?[0-9]{4}",
}

SUPPORTED_ENTITIES: tuple[str, ...] = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                                       "IBAN_CODE", "IP_ADDRESS", "US_SSN", "UK_NINO", "ES_NIF",
                                       "IT_FISCAL_CODE", "IN_AADHAAR")


@functools.cache
def prefilter(entity: str) -> str:
    """The superset regex of one entity type (see :data:`_STATIC_PREFILTERS`)."""
    if entity == "PHONE_NUMBER":
        return _phone_prefilter()
    try:
        return _STATIC_PREFILTERS[entity]
    except KeyError:
        raise ValueError(f"no recognizer for entity type {entity!r}; "
                         f"known: {', '.join(SUPPORTED_ENTITIES)}") from None


@functools.cache
def _offline_email_recognizer_class() -> type:
    """EmailRecognizer whose domain check reads tldextract's bundled suffix list only.

    The stock recognizer calls ``tldextract.extract``, whose default extractor downloads the
    public suffix list on first use (and caches it under the home folder).
    """
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # No URLs: nothing is fetched; no cache folder: nothing is read or written; the snapshot
    # shipped inside the package is used.
    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None,
                                      fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recognizer, validating domains without the network."""

        def validate_result(self, pattern_text: str) -> bool:
            """True when the text's domain ends in a known public suffix."""
            return bool(extractor(pattern_text).fqdn != "")

    return OfflineEmailRecognizer


@functools.cache
def recognizer(entity: str) -> EntityRecognizer:
    """The Presidio recognizer of one entity type (built once, shared)."""
    with _LOCK:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EsNifRecognizer,
            IbanRecognizer,
            InAadhaarRecognizer,
            IpRecognizer,
            ItFiscalCodeRecognizer,
            PhoneRecognizer,
            UkNinoRecognizer,
            UsSsnRecognizer,
        )

        classes: dict[str, Any] = {
            "EMAIL_ADDRESS": _offline_email_recognizer_class(),
            "PHONE_NUMBER": PhoneRecognizer, "CREDIT_CARD": CreditCardRecognizer,
            "IBAN_CODE": IbanRecognizer, "IP_ADDRESS": IpRecognizer,
            "US_SSN": UsSsnRecognizer, "UK_NINO": UkNinoRecognizer,
            "ES_NIF": EsNifRecognizer, "IT_FISCAL_CODE": ItFiscalCodeRecognizer,
            "IN_AADHAAR": InAadhaarRecognizer,
        }
        if entity not in classes:
            raise ValueError(f"no recognizer for entity type {entity!r}; "
                             f"known: {', '.join(SUPPORTED_ENTITIES)}")
        if entity == "PHONE_NUMBER" and PhoneRecognizer.SCORE < MIN_SCORE:
            # has_finding's phone shortcut counts any phonenumbers match as a finding: true
            # only while every phone result scores at least MIN_SCORE.
            raise RuntimeError(f"PhoneRecognizer.SCORE {PhoneRecognizer.SCORE} is below "
                               f"MIN_SCORE {MIN_SCORE}: the phone shortcut would be wrong")
        built: EntityRecognizer = classes[entity]()
        return built


def recognize(text: str, entity: str) -> list[tuple[int, int, float]]:
    """The findings (start, end, score) of one entity type in a text, scored at least
    MIN_SCORE: the recognizer's own ``analyze`` (patterns, validation, invalidation).
    """
    results = recognizer(entity).analyze(text, [entity], None)  # type: ignore[arg-type]
    return [(result.start, result.end, result.score) for result in results
            if result.score >= MIN_SCORE]


def _phone_has_match(text: str) -> bool:
    """Whether PhoneRecognizer finds a number in the text, stopping at the first match.

    ``PhoneRecognizer.analyze`` runs ``phonenumbers.PhoneNumberMatcher`` over the text once per
    supported region (with its leniency) and turns every match into a result scored
    ``PhoneRecognizer.SCORE``; ``remove_duplicates`` then drops only zero-score results and
    results contained in another one, so it keeps at least one result whenever there was a
    match. With ``SCORE >= MIN_SCORE`` (checked where the recognizer is built) the text has a
    finding exactly when some region's matcher yields a match: the remaining regions and
    matches, and the re-parse that only names the region, are skipped.
    """
    import phonenumbers

    phone = recognizer("PHONE_NUMBER")
    regions: Sequence[str] = phone.supported_regions  # type: ignore[attr-defined]
    leniency = phone.leniency  # type: ignore[attr-defined]
    for region in regions:
        for _ in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency):
            return True
    return False


def has_finding(text: str, entity: str) -> bool:
    """Whether :func:`recognize` finds anything of one entity type in a text.

    The same answer, cheaper for phone numbers (see :func:`_phone_has_match`).
    """
    if entity == "PHONE_NUMBER":
        return _phone_has_match(text)
    return bool(recognize(text, entity))


def prepare(entities: Sequence[str]) -> None:
    """Build the entity types' recognizers and load the metadata they read on every call.

    Done before forking worker processes, so that each inherits them instead of building or
    importing them itself (a fork may copy a lock another thread held at that moment).
    """
    for entity in entities:
        recognizer(entity)
    if "PHONE_NUMBER" in entities:
        # A number-like text no region accepts is parsed in every supported region, which
        # loads their metadata.
        _phone_has_match("ref 0000")
