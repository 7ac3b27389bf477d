"""Benchmarks of notifier: throughput and latency against ceilings, ratios in one run.

`make bench` (or `python -m benchmarks`) runs them all and writes `benchmarks/RESULTS.md`.
"""
