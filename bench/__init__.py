"""Benchmarks and load checks: each prints figures; none is a pass/fail test."""
