"""``loopline``: the command line, above the core (it may run tasks and flows)."""
