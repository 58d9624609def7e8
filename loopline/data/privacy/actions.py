"""What ``data.privacy`` does to each source column, decided from the spec and what detection
found, before anything is materialized.

The rules (:func:`plan_privacy`):

- a column the spec names (``columns: {col: action}``) gets that action whether or not
  anything was found in it, except ``refuse``, which refuses only a column where something was
  found;
- any other column gets ``on_detected`` when detection found personal data in at least
  ``min_share`` (and more than none) of its non-empty rows; the target and the event time are
  never transformed by default (that would change the labels or the time line): personal data
  found there refuses the batch unless the spec names the column;
- every other column is left as it is.

``drop`` removes the column before the features are computed, ``hash`` replaces each non-null
value by the hex HMAC-SHA256 of its text under the spec's key (equal values stay equal, so a
hashed entity id still joins), ``mask`` replaces each entity found in the text by
``<ENTITY_TYPE>`` (:mod:`loopline.data.privacy.protect` applies them).

The plan is recorded in the feature set's manifest (:class:`PrivacyRecord`: per column the
entities found, their shares and the action) and is part of its fingerprint. A
:class:`Protection` is the part of a plan that applies to raw records: a model's recipe keeps
the actions on the columns its features read, so the service and batch scoring transform a raw
record exactly as materialization transformed the source, and the prediction log keeps raw
records protected by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict

from loopline.data.privacy.scanner import ColumnFinding
from loopline.spec.sections.privacy import HashKeySource, PrivacyAction, PrivacySpec

#: The actions that change a column (``allow`` and ``refuse`` keep it or stop the batch).
ProtectAction = Literal["drop", "hash", "mask"]
_PROTECTING = ("drop", "hash", "mask")
#: Rows a Markdown table lists at most (a model card section stays small).
_MAX_ROWS = 50


class ColumnPrivacy(BaseModel):
    """What was found in one source column and what is done to it.

    Attributes:
        column: the source column.
        action: its action: ``refuse``, ``drop``, ``hash``, ``mask`` or ``allow``.
        named: whether the spec names the column (else the action is ``on_detected``).
        found: whether detection counted it as holding personal data (a share of at least
            ``min_share``, and more than none).
        rows_scanned: its non-empty rows scanned (0 when it was not scanned).
        share: the share of those rows with at least one finding.
        entity_shares: per entity type found, its share of those rows.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str
    action: PrivacyAction
    named: bool
    found: bool
    rows_scanned: int = 0
    share: float = 0.0
    entity_shares: dict[str, float] = {}

    @property
    def refused(self) -> bool:
        """Whether this column refuses the batch (``refuse`` and personal data found)."""
        return self.action == "refuse" and self.found


class PrivacyRecord(BaseModel):
    """What detection found in a source and what ``data.privacy`` did about it (a feature set
    version's manifest keeps it).

    Attributes:
        entities: the entity types looked for (and masked).
        detect: whether the source's text columns were scanned.
        min_share: the share of rows a column needed to count as holding personal data.
        scanned: the columns scanned.
        columns: every column the spec names or where something was found, in source order.
        key: where the ``hash`` key comes from.
        key_id: the id of the key hashed with (:func:`~loopline.data.privacy.keys.key_id`);
            None when no column is hashed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    entities: list[str]
    detect: bool
    min_share: float
    scanned: list[str]
    columns: list[ColumnPrivacy]
    key: HashKeySource
    key_id: str | None = None

    @property
    def protected(self) -> dict[str, ProtectAction]:
        """``{column: drop | hash | mask}`` for every column that is transformed."""
        return {c.column: cast(ProtectAction, c.action) for c in self.columns
                if c.action in _PROTECTING}

    @property
    def allowed(self) -> list[str]:
        """The columns the spec explicitly allows."""
        return [c.column for c in self.columns if c.action == "allow"]

    @property
    def refused(self) -> list[ColumnPrivacy]:
        """The columns that refuse the batch."""
        return [c for c in self.columns if c.refused]

    @property
    def hashes(self) -> bool:
        """Whether any column is hashed (so a key is needed)."""
        return "hash" in self.protected.values()

    def keyed(self, key_id: str | None) -> PrivacyRecord:
        """This record with the id of the key its columns are hashed with."""
        return self.model_copy(update={"key_id": key_id if self.hashes else None})

    def identity(self) -> dict[str, object]:
        """What of the plan changes the materialized rows (part of the feature set's
        fingerprint): the actions, the entity types masked and the key's id.
        """
        protected = self.protected
        identity: dict[str, object] = {"actions": dict(sorted(protected.items()))}
        if "mask" in protected.values():
            identity["entities"] = sorted(self.entities)
        if self.hashes:
            identity["key_id"] = self.key_id
        return identity

    def protection(self, columns: Iterable[str] | None = None, *, drop: bool = True) -> Protection:
        """The actions of this record as a :class:`Protection` (on ``columns`` only, when
        given; without ``drop``, the dropped columns are left out).
        """
        wanted = None if columns is None else set(columns)
        actions = {column: action for column, action in self.protected.items()
                   if (wanted is None or column in wanted) and (drop or action != "drop")}
        return Protection(actions=actions, entities=tuple(self.entities),
                          key=self.key if "hash" in actions.values() else None,
                          key_id=self.key_id if "hash" in actions.values() else None)

    def render_markdown(self) -> str:
        """The record for people (the model card's "Personal data" section)."""
        lines = [f"Scanned {len(self.scanned)} text column(s) for "
                 f"{', '.join(self.entities)}." if self.detect else
                 "Detection was off (`data.privacy.detect: false`): only the named columns "
                 "were acted on."]
        shown = self.columns[:_MAX_ROWS]
        if not shown:
            lines += ["", "No personal data was found; no column is transformed."]
            return "\n".join(lines) + "\n"
        lines += ["", "| column | entities found (share of rows) | rows with findings | action |",
                  "|---|---|---|---|"]
        for column in shown:
            found = ", ".join(f"{entity} {share:.1%}"
                              for entity, share in sorted(column.entity_shares.items())
                              if share > 0) or "none"
            how = "named in the spec" if column.named else "on detection"
            lines.append(f"| {column.column} | {found} | {column.share:.1%} | "
                         f"{column.action} ({how}) |")
        if len(self.columns) > len(shown):
            lines.append(f"| ... {len(self.columns) - len(shown)} more | | | |")
        if self.hashes:
            lines += ["", f"Hashed columns hold keyed HMAC-SHA256 digests (key id "
                      f"`{self.key_id}`): equal values stay equal, so joins still work."]
        return "\n".join(lines) + "\n"


class Protection(BaseModel):
    """Actions to apply to raw records or frames: what a recipe, the prediction log or a
    reference of raw inputs needs of a :class:`PrivacyRecord`.

    Attributes:
        actions: ``{column: drop | hash | mask}``.
        entities: the entity types ``mask`` replaces.
        key: where the ``hash`` key comes from (None when nothing is hashed).
        key_id: the id of the key the data was hashed with (checked when the key is read).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    actions: dict[str, ProtectAction] = {}
    entities: tuple[str, ...] = ()
    key: HashKeySource | None = None
    key_id: str | None = None

    def __hash__(self) -> int:
        # Recipes (which hold one) key the compiled feature computers: hashable, dict or not.
        return hash((tuple(self.actions.items()), self.entities, self.key, self.key_id))

    @property
    def hashes(self) -> bool:
        """Whether a column is hashed (so a key is needed)."""
        return "hash" in self.actions.values()

    def restricted(self, columns: Iterable[str]) -> Protection:
        """The actions on ``columns`` only."""
        wanted = set(columns)
        actions = {c: a for c, a in self.actions.items() if c in wanted}
        hashes = "hash" in actions.values()
        return self.model_copy(update={"actions": actions, "key": self.key if hashes else None,
                                       "key_id": self.key_id if hashes else None})

    def masking_text(self, columns: Iterable[str], allowed: Iterable[str] = ()) -> Protection:
        """These actions, plus ``mask`` on each of ``columns`` (text) that has no action and is
        not ``allowed``: what keeps personal data a client sends in a text column out of a log,
        even in a column where none was found in the source.
        """
        skip = set(allowed)
        extra = {c: "mask" for c in columns if c not in self.actions and c not in skip}
        return self.model_copy(update={"actions": {**self.actions, **extra}})


def merge_protections(protections: Sequence[Protection]) -> Protection | None:
    """One protection covering several (a champion's and a challenger's): per column the
    strongest action (drop, then hash, then mask); None when none is given.

    Raises:
        ValueError: two protections hash with different keys.
    """
    if not protections:
        return None
    rank = {"drop": 0, "hash": 1, "mask": 2}
    actions: dict[str, ProtectAction] = {}
    entities: list[str] = []
    hashing = [p for p in protections if p.hashes]
    if len({(p.key, p.key_id) for p in hashing}) > 1:
        raise ValueError("the versions hash with different keys")
    for protection in protections:
        for column, action in protection.actions.items():
            if column not in actions or rank[action] < rank[actions[column]]:
                actions[column] = action
        entities += [e for e in protection.entities if e not in entities]
    key = hashing[0] if hashing else None
    return Protection(actions=actions, entities=tuple(entities),
                      key=None if key is None else key.key,
                      key_id=None if key is None else key.key_id)


def plan_privacy(privacy: PrivacySpec, columns: Sequence[str],
                 findings: Sequence[ColumnFinding], keep: Iterable[str] = ()) -> PrivacyRecord:
    """Each column's action (the rules in the module's docstring).

    Args:
        privacy: the spec's ``data.privacy``.
        columns: the source's columns, in order.
        findings: what detection found (one per scanned column; empty without detection).
        keep: columns never transformed by default (the target, the event time): personal
            data found there refuses the batch unless the spec names them.
    """
    found_in = {finding.column: finding for finding in findings}
    protected_roles = set(keep)
    planned = []
    for column in columns:
        finding = found_in.get(column)
        share = finding.share if finding is not None else 0.0
        found = share > 0 and share >= privacy.min_share
        named = privacy.columns.get(column)
        if named is None and not found:
            continue
        action: PrivacyAction = named if named is not None else (
            "refuse" if column in protected_roles else privacy.on_detected)
        planned.append(ColumnPrivacy(
            column=column, action=action, named=named is not None, found=found,
            rows_scanned=finding.rows_scanned if finding else 0, share=share,
            entity_shares=dict(finding.entity_shares) if finding else {}))
    return PrivacyRecord(entities=list(privacy.entities), detect=privacy.detect,
                         min_share=privacy.min_share, scanned=[f.column for f in findings],
                         columns=planned, key=privacy.hash_key)


def refusal_message(spec_name: str, source: str, refused: Sequence[ColumnPrivacy],
                    quarantine: str | None) -> str:
    """Why a batch is refused: each column with the entity types found and their shares."""
    lines = [f"personal data found in {source} for {spec_name}; data.privacy refuses it:"]
    for column in refused:
        entities = ", ".join(f"{e} in {s:.1%} of rows" for e, s in
                             sorted(column.entity_shares.items()) if s > 0)
        lines.append(f"  column {column.column}: {entities} (any: {column.share:.1%} of "
                     f"{column.rows_scanned} rows)")
    lines.append("fix: name each column in data.privacy.columns with drop, hash or mask (or "
                 "allow, to keep it as it is), or clean the source")
    if quarantine:
        lines.append(f"the batch is quarantined at {quarantine}")
    return "\n".join(lines)


def entity_shares(refused: Sequence[ColumnPrivacy]) -> Mapping[str, dict[str, float]]:
    """``{column: {entity: share}}`` of refused columns (what the error carries)."""
    return {c.column: dict(c.entity_shares) for c in refused}
