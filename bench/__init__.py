"""loopline's benchmarks: each runs loopline side by side with a named peer on the same data and
machine, and records the ratio in one results file (``python -m bench``; see ``bench/README.md``).
"""
