"""Benchmarks of tunebot against plain baselines; each writes JSON next to it."""
