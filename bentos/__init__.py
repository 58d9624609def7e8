"""BentoML services. ``tabular_service.py`` is copied into each Bento's build context beside its
``loopline_bento.json``; it is not imported from here.
"""
