"""Dividing a feature set into train / validation / test, as the spec's ``data.split`` says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from loopline.spec.sections.data import ROW_ID, DataSpec, RandomSplit


@dataclass(frozen=True)
class Splits:
    """The three parts of a feature set."""

    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame


def split_frame(frame: pl.DataFrame, data: DataSpec) -> Splits:
    """Split ``frame`` randomly (seeded) or by time (oldest trains, newest tests).

    Every row lands in exactly one part; the same frame and spec always give the same parts.
    """
    split = data.split
    n = frame.height
    n_test = round(n * split.test)
    n_val = round(n * split.validation)
    if isinstance(split, RandomSplit):
        order = np.random.default_rng(split.seed).permutation(n)
        ordered = frame[order]
    else:
        assert data.event_time is not None  # enforced by the spec's consistency checks
        # Stable: rows that tie on both (production rows have no entity id) keep the order
        # they were written in, so the same frame always splits the same way. Without an
        # entity id, ties are broken by the rows' identity (their order in the source).
        tie_break = data.entity_id or (ROW_ID if ROW_ID in frame.columns else None)
        keys = [data.event_time] + ([tie_break] if tie_break else [])
        ordered = frame.sort(keys, maintain_order=True)
    n_train = n - n_val - n_test
    return Splits(
        train=ordered.slice(0, n_train),
        validation=ordered.slice(n_train, n_val),
        test=ordered.slice(n_train + n_val, n_test),
    )
