"""The per-class recall floor of the gates (``gates.min_class_recall``): one check per class
with a floor, decided on the test split, and a Markdown table of every class's recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from loopline.release.gates import GateCheck

#: The table's title (a model card shows the table under it as a section of its own).
RECALL_TITLE = "Recall per class (test split)"
#: Classes the table shows at most (a decision is kept in an MLflow tag with a size limit);
#: every class with a floor still gets its check.
TABLE_ROWS = 50


def _floors(min_class_recall: float | Mapping[str, float],
            labels: Sequence[Any]) -> dict[str, float]:
    """``{label as text: floor}``: every label's for one number, the named ones' otherwise."""
    if isinstance(min_class_recall, Mapping):
        return {str(label): float(floor) for label, floor in min_class_recall.items()}
    return {str(label): float(min_class_recall) for label in labels}


def class_recall_checks(min_class_recall: float | Mapping[str, float] | None,
                        y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray,
                        classes: Sequence[Any]) -> tuple[list[GateCheck], str]:
    """A ``class_recall`` check (metric ``recall[<label>]``) for each class with a floor, and a
    Markdown table of each class's recall on the test split.

    Labels are matched as text (the spec's keys are text; ``{"1": 0.7}`` names class ``1``).
    A label the spec names that has no row in the test split fails: its recall is unknown.

    Args:
        min_class_recall: ``gates.min_class_recall``: one floor for every class, or
            ``{label: floor}``; None gives no check and no table.
        y_true: the test split's labels.
        y_pred: the model's predicted labels for the same rows.
        classes: the model's classes (with the test split's labels, the classes that get a
            recall).
    """
    if min_class_recall is None:
        return [], ""
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    labels: list[Any] = list(classes)
    # A test label the model never learned is still a class the floor covers (recall 0).
    seen = {str(label) for label in labels}
    for label in np.unique(truth).tolist():
        if str(label) not in seen:
            labels.append(label)
            seen.add(str(label))
    floors = _floors(min_class_recall, labels)
    by_text = {str(label): label for label in labels}
    checks: list[GateCheck] = []
    rows: list[str] = []
    for text in [*by_text, *[name for name in floors if name not in by_text]]:
        floor = floors.get(text)
        members = truth == by_text[text] if text in by_text else np.zeros(len(truth), dtype=bool)
        support = int(members.sum())
        recall = float(np.mean(predicted[members] == truth[members])) if support else None
        passed = recall is not None and (floor is None or recall >= floor)
        note = "" if support else "no row of this class in the test split"
        if floor is not None:
            checks.append(GateCheck(metric=f"recall[{text}]", kind="class_recall",
                                    required=f">= {floor:g}", observed=recall,
                                    passed=passed, note=note))
        shown = "—" if recall is None else f"{recall:.4f}"
        result = "—" if floor is None else ("pass" if passed else "FAIL")
        required = "—" if floor is None else f">= {floor:g}"
        rows.append(f"| {text} | {support} | {shown} | {required} | {result} |")
    lines = [f"### {RECALL_TITLE}", "",
             "| class | test rows | recall | required | result |", "|---|---|---|---|---|",
             *rows[:TABLE_ROWS]]
    if len(rows) > TABLE_ROWS:
        lines += ["", f"{len(rows) - TABLE_ROWS} more classes not shown (each with a floor is "
                      "a check above)."]
    return checks, "\n".join(lines) + "\n"
