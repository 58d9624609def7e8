"""The spec language: its strict pydantic models, the YAML loader that reports every problem
at once, and the generated reference.
"""
