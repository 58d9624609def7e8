"""Peer services the benchmarks compare loopline against."""
