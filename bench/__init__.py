"""Benchmarks of the Linchpin Mobile Gateway; see bench/run.py for the story."""
