"""A service worker's memory: what it holds once it has started is left out of the garbage
collector's passes.

A worker imports BentoML, MLflow, polars, scikit-learn (and torch for a Lightning model) and
loads its models: some 400k objects that are never garbage. Every full collection walked them
all; under load those pauses (tens of milliseconds, more with a deep queue) became the
service's tail latency. :func:`freeze_what_is_loaded` moves them to the permanent generation.
"""

from __future__ import annotations

import gc


def freeze_what_is_loaded() -> int:
    """Collect once, then leave every object alive now out of later collections; returns how
    many were frozen. Frozen objects are still freed by reference counting: a model version
    swapped out later is, unless it holds reference cycles (those stay until the worker ends).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
