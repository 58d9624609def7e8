"""Calibrating a classifier's scores into probabilities, per class, by isotonic regression.

:func:`fit_calibrator` fits, on a held-out split with labels, one isotonic regression per class
(one-vs-rest), as NannyML's CBPE does (``IsotonicRegression(out_of_bounds="clip")``): for a
binary model only the positive class's column (the last), the negative class's probability
being its complement; for a multiclass model every column, each row renormalized to sum to one
afterwards (a row whose calibrated values are all zero becomes uniform, as in NannyML).

The fitted :class:`Calibrator` keeps only each regression's thresholds (``X_thresholds_``,
``y_thresholds_``) as plain arrays: it serializes to JSON (:meth:`Calibrator.to_dict`,
:meth:`Calibrator.from_dict`) and applies with ``np.interp`` (linear between thresholds, clipped
at both ends, which is what ``IsotonicRegression.predict`` computes), so no scikit-learn is needed
where it is applied.

A class absent from the held-out labels (or, for a binary model, a held-out split with one class
only) cannot be calibrated: its isotonic fit would be a constant 0 or 1. That class's column is
then passed through unchanged (identity), as NannyML does when a class needs no calibration; the
class is listed in :attr:`Calibrator.identity_classes` and a warning is logged, because estimates
for it then trust the model's own scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("loopline.estimation")

#: One isotonic regression: its thresholds (x ascending) and values; ``None`` is the identity.
Thresholds = tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True, eq=False)
class Calibrator:
    """A fitted calibration: one isotonic map per calibrated column.

    Attributes:
        classes: the model's class labels in score-column order (binary: the positive class last).
        maps: one entry per calibrated column: for a binary model one (the positive column), for
            a multiclass model one per class; each ``(x_thresholds, y_thresholds)`` or ``None``
            for the identity (a class absent from the held-out labels).
    """

    classes: tuple[int | str, ...]
    maps: tuple[Thresholds, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"a calibrator needs at least 2 classes, got {list(self.classes)}")
        expected = 1 if self.binary else len(self.classes)
        if len(self.maps) != expected:
            raise ValueError(f"{len(self.classes)} classes need {expected} calibration map(s), "
                             f"got {len(self.maps)}")
        for found in self.maps:
            if found is not None and (found[0].ndim != 1 or found[0].shape != found[1].shape
                                      or found[0].size == 0):
                raise ValueError("each calibration map needs two 1-D arrays of the same, non-zero "
                                 "length (x and y thresholds)")

    @property
    def binary(self) -> bool:
        """Whether the model has two classes (only the positive column is calibrated)."""
        return len(self.classes) == 2

    @property
    def identity_classes(self) -> list[int | str]:
        """The classes left uncalibrated (absent from the held-out labels)."""
        calibrated = self.classes[-1:] if self.binary else self.classes
        return [label for label, found in zip(calibrated, self.maps, strict=True) if found is None]

    def calibrate(self, scores: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities for the model's raw scores.

        Args:
            scores: n x k class scores, columns in :attr:`classes` order.
            order: optionally, each calibrated column's ascending argsort, one row per
                calibrated column (1 x n for a binary model: the positive column; k x n
                otherwise), when the caller has it: the maps then read ascending values, which
                is several times faster.

        Returns:
            n x k probabilities, each row summing to one.

        Raises:
            ValueError: ``scores`` is not n x k for this calibrator's k classes, or ``order``
                does not fit it.
        """
        raw = np.asarray(scores, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.classes):
            raise ValueError(f"scores must be n x {len(self.classes)} (one column per class "
                             f"{list(self.classes)}), got shape {raw.shape}")
        columns = [1] if self.binary else list(range(len(self.classes)))
        if order is not None and order.shape != (len(columns), raw.shape[0]):
            raise ValueError(f"order must be {len(columns)} x n (an argsort per calibrated "
                             f"column), got shape {order.shape}")
        calibrated = np.column_stack([
            _apply(found, raw[:, column], None if order is None else order[position])
            for position, (column, found) in enumerate(zip(columns, self.maps, strict=True))])
        if self.binary:
            return np.column_stack([1.0 - calibrated[:, 0], calibrated[:, 0]])
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / len(self.classes))
        # NannyML's rule: a row whose calibrated values are all zero becomes uniform.
        normalized: np.ndarray = np.divide(calibrated, total, out=uniform, where=total != 0)
        return normalized

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the classes and each map's thresholds (``None`` for identity)."""
        return {
            "classes": list(self.classes),
            "maps": [None if found is None else {"x": found[0].tolist(), "y": found[1].tolist()}
                     for found in self.maps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """The calibrator :meth:`to_dict` wrote.

        Raises:
            ValueError: a key is missing or the maps do not fit the classes.
        """
        try:
            classes, maps = data["classes"], data["maps"]
        except (KeyError, TypeError) as exc:
            raise ValueError("a calibrator needs 'classes' and 'maps' (see Calibrator.to_dict)") from exc
        return cls(classes=tuple(classes),
                   maps=tuple(None if found is None
                              else (np.asarray(found["x"], dtype=np.float64),
                                    np.asarray(found["y"], dtype=np.float64))
                              for found in maps))


def _apply(found: Thresholds, column: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    if found is None:
        return column
    # IsotonicRegression.predict with out_of_bounds="clip": linear between thresholds, the end
    # values outside them; np.interp does both. On ascending input np.interp finds each value's
    # interval from the one before (about 10x faster than a search per value).
    if order is None:
        mapped: np.ndarray = np.interp(column, found[0], found[1])
        return mapped
    out = np.empty_like(column)
    out[order] = np.interp(column[order], found[0], found[1])
    return out


def fit_calibrator(scores: np.ndarray, labels: np.ndarray | Sequence[Any],
                   classes: Sequence[int | str]) -> Calibrator:
    """Fit one-vs-rest isotonic calibration on a held-out split.

    Args:
        scores: n x k class scores of the held-out rows, columns in ``classes`` order.
        labels: the rows' true labels (each one of ``classes``).
        classes: the model's class labels in score-column order (binary: the positive class last).

    Returns:
        The fitted calibrator; a class absent from ``labels`` (for a binary model: ``labels`` of
        one class only) is left uncalibrated (see the module's notes).

    Raises:
        ValueError: no rows, shapes that do not match, fewer than 2 classes, or a label outside
            ``classes``.
    """
    from sklearn.isotonic import IsotonicRegression

    classes = list(classes)
    raw = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels)
    if len(classes) < 2:
        raise ValueError(f"calibration needs at least 2 classes, got {classes}")
    if raw.ndim != 2 or raw.shape[1] != len(classes):
        raise ValueError(f"scores must be n x {len(classes)} (one column per class {classes}), "
                         f"got shape {raw.shape}")
    if raw.shape[0] == 0 or truth.shape != (raw.shape[0],):
        raise ValueError(f"calibration needs at least one row and one label per row: "
                         f"{raw.shape[0]} score rows, labels of shape {truth.shape}")
    codes = _class_codes(truth, classes)
    columns = [len(classes) - 1] if len(classes) == 2 else list(range(len(classes)))
    maps: list[Thresholds] = []
    for column in columns:
        target = (codes == column).astype(np.float64)
        if target.min() == target.max():  # one class only in this one-vs-rest split
            logger.warning("class %r: the held-out labels have no rows %s it, so it cannot be "
                           "calibrated; its scores pass through unchanged", classes[column],
                           "outside" if target[0] else "of")
            maps.append(None)
            continue
        fitted = IsotonicRegression(out_of_bounds="clip").fit(raw[:, column], target)
        maps.append((np.asarray(fitted.X_thresholds_, dtype=np.float64),
                     np.asarray(fitted.y_thresholds_, dtype=np.float64)))
    return Calibrator(classes=tuple(classes), maps=tuple(maps))


def _class_codes(truth: np.ndarray, classes: list[int | str]) -> np.ndarray:
    """Each label's position in ``classes``.

    Raises:
        ValueError: labels outside ``classes``.
    """
    position = {label: index for index, label in enumerate(classes)}
    codes = np.fromiter((position.get(label, -1) for label in truth.tolist()), dtype=np.int64,
                        count=truth.size)
    if (codes < 0).any():
        outside = sorted({str(label) for label in truth[codes < 0].tolist()})
        raise ValueError(f"labels {', '.join(outside)} are not among the classes {classes}")
    return codes
