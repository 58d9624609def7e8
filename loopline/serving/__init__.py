"""Serving, free of BentoML: the Bento's configuration and request models, routing, canary
steps, A/B analysis and the prediction log.
"""
