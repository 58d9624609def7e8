"""Prefect flows, one per file, each a thin composition of tasks."""

from loopline.state import apply_environment

apply_environment()
