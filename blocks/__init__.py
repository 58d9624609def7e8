"""Prefect Block classes: configuration and credentials only, never workflow logic."""

from blocks.storage import FeatureStoreStorage

__all__ = ["FeatureStoreStorage"]
