"""Alerts: what an alert is, its channels (log, webhook, Slack), the ledger that holds its
cooldown, and delivery.
"""
