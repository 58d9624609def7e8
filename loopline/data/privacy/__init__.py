"""Personal data in the source: detection (Presidio's pattern recognizers, no language model)
and the actions the spec's ``data.privacy`` takes on the columns where it is found.
"""
