"""Data: reading sources, checking batches, computing features, the versioned feature store,
point-in-time joins and splits.
"""
