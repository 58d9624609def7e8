"""Batch scoring: inputs of any size read in chunks, checkpointed output, resumable scoring."""
