"""Training: the candidate models, Optuna sweeps, MLflow tracking, resource checks and the
training queue's rules.
"""
