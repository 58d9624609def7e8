"""Training and scoring tabular models: preprocessing, scikit-learn and Lightning candidates,
metrics, and the :class:`~loopline.training.modeling.tabular_model.TabularModel` every one of them becomes.

Heavy imports (torch, lightning, scikit-learn) happen inside functions, so importing loopline
(and deploying its flows) stays fast.
"""
