"""Benchmarks: measured, repeatable timings whose results are written to docs/benchmarks.md."""
