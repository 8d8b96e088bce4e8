"""Benchmark scripts; their results are recorded in docs/BENCHMARKS.md."""
