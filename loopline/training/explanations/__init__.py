"""Explaining models: per-record feature contributions (SHAP) and global feature importance.

:func:`explainer_for` builds a model's explainer once (tree, linear or a background-sample
kernel explainer); :func:`global_importance` ranks the features for the model card.
"""

from loopline.training.explanations.explainers import (
    Explanation,
    ModelExplainer,
    explainer_for,
    explainer_method,
)
from loopline.training.explanations.importance import FeatureImportance, global_importance

__all__ = ["Explanation", "FeatureImportance", "ModelExplainer", "explainer_for",
           "explainer_method", "global_importance"]
