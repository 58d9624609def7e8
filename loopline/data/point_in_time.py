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
    right = features.select([entity_id, pl.col(feature_time).alias("__feature_time"), *columns])
    left = entities.with_row_index("__row").with_columns(pl.col(event_time).alias("__entity_time"))
    left_type, right_type = left.schema["__entity_time"], right.schema["__feature_time"]
    if left_type != right_type:
        # Compare at the finer resolution: casting the feature time down to the entity's unit
        # (or to a Date) would round a later observation onto the entity's time and leak it.
        # A Date becomes its midnight, so a value observed during that day counts as later.
        zone = getattr(left_type, "time_zone", None) or getattr(right_type, "time_zone", None)
        common = pl.Datetime("ns", zone)
        left = left.with_columns(pl.col("__entity_time").cast(common))
        right = right.with_columns(pl.col("__feature_time").cast(common))
    joined = left.sort("__entity_time").join_asof(
        right.sort("__feature_time"), left_on="__entity_time", right_on="__feature_time",
        by=entity_id, strategy="backward", check_sortedness=False)
    return joined.sort("__row").drop("__row", "__entity_time", "__feature_time")
