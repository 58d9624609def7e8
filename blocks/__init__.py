"""Prefect Block classes: configuration and credentials only, never workflow logic."""
