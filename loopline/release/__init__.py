"""Release: the model registry in loopline's vocabulary, the gates a candidate must pass, model
cards and lineage.
"""
