"""A/B testing of the challenger against the champion: the fixed-horizon tests
(:mod:`~loopline.serving.ab.fixed_horizon`), the always-valid sequential test
(:mod:`~loopline.serving.ab.msprt`), one metric's comparison by both
(:mod:`~loopline.serving.ab.comparison`), the analysis of a prediction log joined with feedback
(:mod:`~loopline.serving.ab.analysis`) and its report (:mod:`~loopline.serving.ab.report`).

Every effect is ``challenger − champion`` (``b − a``). Libraries only: no Prefect, no BentoML.
"""
