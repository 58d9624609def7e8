"""Optuna sweeps over the spec's candidates: the study (:mod:`.study`), its trials
(:mod:`.trials`), what it found (:mod:`.leaderboard`), and what a retraining does about it
(:mod:`.reuse`: the champion's configuration again, or a new sweep).

A trial picks a candidate (when the spec has several) and values for its ``search`` space,
trains it on the train split and is scored on the validation split, so every candidate is
compared on the same data. Lightning trials report every epoch to the pruner and stop early.
"""
