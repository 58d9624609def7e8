"""Monitoring: drift, performance once labels arrive, retraining guardrails and alerting."""
