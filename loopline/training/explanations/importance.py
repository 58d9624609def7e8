"""Global feature importance of a model, for its model card: the mean absolute SHAP value over
rows of a frame (tree and linear models), else permutation importance.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from loopline.training.explanations.explainers import explainer_for, explainer_method
from loopline.training.modeling.tabular_model import TabularModel

#: Rows of the frame explained (tree and linear) or scored per shuffle (permutation), at most.
IMPORTANCE_ROWS = 1000
#: Shuffles of each feature averaged by permutation importance.
PERMUTATION_REPEATS = 3
#: Features listed in the card's table, at most (a card is stored in a 100k-character tag).
TABLE_ROWS = 50
#: Features drawn in the picture, at most.
CHART_ROWS = 25


class FeatureImportance(BaseModel):
    """How much the model relies on each feature.

    Attributes:
        method: ``shap`` (mean absolute SHAP value of the explained output) or ``permutation``
            (the mean increase of the loss, or the mean absolute change of the output without
            a target, when the feature's values are shuffled across rows).
        output: what is measured (e.g. ``log-odds of 1``, ``log loss``).
        rows: rows of the frame it was computed on.
        values: importance per feature, largest first.
    """

    model_config = ConfigDict(frozen=True)

    method: Literal["shap", "permutation"]
    output: str
    rows: int
    values: dict[str, float]

    def _heading(self) -> str:
        # No "|" in it: it heads a Markdown table column.
        if self.method == "shap":
            return f"mean absolute SHAP value ({self.output})"
        return f"permutation: {self.output}"

    def render_markdown(self) -> str:
        """A Markdown table, largest first, at most :data:`TABLE_ROWS` features."""
        lines = [f"| feature | {self._heading()} |", "| --- | ---: |"]
        items = list(self.values.items())
        lines += [f"| {name} | {value:.4g} |" for name, value in items[:TABLE_ROWS]]
        if len(items) > TABLE_ROWS:
            lines.append(f"\n…and {len(items) - TABLE_ROWS} more features.")
        method = ("SHAP values" if self.method == "shap" else "permutation importance")
        lines.append(f"\nComputed with {method} on {self.rows} rows of the test split.")
        return "\n".join(lines)

    def render_png(self, path: str | Path | None = None) -> bytes:
        """Horizontal bars of the :data:`CHART_ROWS` most important features, drawn on a
        matplotlib Agg figure of its own (no pyplot); written to ``path`` when given.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        items = list(self.values.items())[:CHART_ROWS][::-1]  # largest on top
        figure = Figure(figsize=(8, 1.5 + 0.3 * max(len(items), 1)), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.barh([name for name, _ in items], [value for _, value in items], color="tab:blue")
        axes.set_xlabel(self._heading())
        shown = f" (top {CHART_ROWS} of {len(self.values)})" if len(self.values) > CHART_ROWS else ""
        title = f"Feature importance{shown}"
        axes.set_title(title)
        axes.grid(True, axis="x", alpha=0.3)
        buffer = io.BytesIO()
        # No software version or time in the file: equal importances give equal bytes.
        figure.savefig(buffer, format="png", metadata={"Software": None, "Title": title})
        data = buffer.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data


def global_importance(model: TabularModel, frame: Any, target: str | None = None, *,
                      seed: int = 0) -> FeatureImportance:
    """How much ``model`` relies on each feature, over up to :data:`IMPORTANCE_ROWS` rows of
    ``frame`` (a polars or pandas frame holding the model's features, and ``target``).

    Tree and linear models: the mean absolute SHAP value per feature (exact and cheap for
    them). Other models (the MLP): permutation importance, each feature shuffled
    :data:`PERMUTATION_REPEATS` times: the mean increase of the log loss (classification) or the
    squared error (regression) when ``target`` is given, else the mean absolute change of the
    model's output (the probability of the positive or predicted class, or the value).
    """
    rows = len(frame)
    if rows > IMPORTANCE_ROWS:
        chosen = np.sort(np.random.default_rng(seed).choice(rows, IMPORTANCE_ROWS, replace=False))
        frame = frame[chosen] if hasattr(frame, "height") else frame.iloc[chosen]
        rows = IMPORTANCE_ROWS
    names = list(model.feature_names)
    if rows == 0:
        return FeatureImportance(method="permutation", output="no rows", rows=0,
                                 values=dict.fromkeys(names, 0.0))
    explainer = explainer_for(model) if _cheap_to_explain(model) else None
    if explainer is not None:
        explanation = explainer.explain(frame)
        values = np.abs(explanation.contributions).mean(axis=0)
        return FeatureImportance(method="shap", output=explanation.output, rows=rows,
                                 values=_sorted(names, values))
    columns = {name: np.asarray(frame[name]) for name in names}
    truth = np.asarray(frame[target]) if target is not None else None
    measure, output = _measure(model, truth)
    baseline = model.scores(columns)
    rng = np.random.default_rng(seed)
    values = np.zeros(len(names))
    for j, name in enumerate(names):
        for _ in range(PERMUTATION_REPEATS):
            shuffled = {**columns, name: columns[name][rng.permutation(rows)]}
            values[j] += measure(model.scores(shuffled), baseline) / PERMUTATION_REPEATS
    return FeatureImportance(method="permutation", output=output, rows=rows,
                             values=_sorted(names, values))


Measure = Callable[[np.ndarray, np.ndarray], float]


def _measure(model: TabularModel, truth: np.ndarray | None) -> tuple[Measure, str]:
    """How much worse (or how different) shuffled scores are than the baseline's, and its name."""
    if model.task == "regression":
        if truth is None:
            return ((lambda scores, base: float(np.abs(scores - base).mean())),
                    "mean absolute change of the value")
        actual = truth.astype(np.float64)
        return (lambda scores, base: float(((scores - actual) ** 2).mean()
                                           - ((base - actual) ** 2).mean())), "increase of squared error"
    classes = list(model.classes or [])
    if truth is None:
        def change(scores: np.ndarray, base: np.ndarray) -> float:
            # The probability of the baseline's predicted class (the positive one, if binary).
            picked = (np.full(len(base), len(classes) - 1) if len(classes) == 2
                      else base.argmax(axis=1))
            rows = np.arange(len(base))
            return float(np.abs(scores[rows, picked] - base[rows, picked]).mean())
        return change, "mean absolute change of the probability"
    index = {label: i for i, label in enumerate(classes)}
    positions = np.array([index.get(label, -1) for label in truth.tolist()], dtype=np.intp)
    known = positions >= 0  # a label unseen in training has no probability to score

    def log_loss(scores: np.ndarray) -> float:
        picked = scores[np.flatnonzero(known), positions[known]]
        return float(-np.log(np.clip(picked, 1e-15, 1.0)).mean()) if picked.size else 0.0

    return (lambda scores, base: log_loss(scores) - log_loss(base)), "increase of log loss"


def _cheap_to_explain(model: TabularModel) -> bool:
    """Whether its SHAP values are exact and fast (tree and linear models)."""
    return explainer_method(model) in ("tree", "linear")


def _sorted(names: list[str], values: np.ndarray) -> dict[str, float]:
    order = sorted(range(len(names)), key=lambda j: (-values[j], names[j]))
    return {names[j]: float(values[j]) for j in order}
