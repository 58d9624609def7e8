"""Point-in-time joins: each entity row gets the feature values as they were at its event time,
never a value observed later (which would leak the future into training).
"""

from __future__ import annotations

import polars as pl


def point_in_time_join(entities: pl.DataFrame, features: pl.DataFrame, *, entity_id: str,
                       event_time: str, feature_time: str | None = None,
                       feature_columns: list[str] | None = None) -> pl.DataFrame:
    """Join to every entity row the latest feature row of the same entity observed at or before
    the entity row's time.

    Args:
        entities: rows with ``entity_id`` and ``event_time`` (and anything else, e.g. labels).
        features: feature rows with ``entity_id`` and ``feature_time``.
        entity_id: the entity column (same name on both sides).
        event_time: the time column of ``entities``.
        feature_time: the time column of ``features`` (defaults to ``event_time``).
        feature_columns: the feature columns to bring over (default: all but the keys).

    Returns:
        ``entities`` in their original order, with the feature columns added; null where the
        entity had no feature row yet.
    """
    feature_time = feature_time or event_time
    keys = {entity_id, feature_time}
    columns = feature_columns or [c for c in features.columns if c not in keys]
    clashes = (set(columns) & set(entities.columns)) - keys
    if clashes:
        raise ValueError(f"columns on both sides: {sorted(clashes)}; select or rename them")
    right = (features.select([entity_id, feature_time, *columns])
             .rename({feature_time: "__feature_time"})
             .sort("__feature_time"))
    left = entities.with_row_index("__row").sort(event_time)
    # join_asof needs both sides on the same time dtype (a Date against a Datetime would not).
    right = right.with_columns(pl.col("__feature_time").cast(left.schema[event_time]))
    joined = left.join_asof(right, left_on=event_time, right_on="__feature_time", by=entity_id,
                            strategy="backward", check_sortedness=False)
    return joined.sort("__row").drop("__row", "__feature_time")
