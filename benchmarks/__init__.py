"""Benchmarks: throughput and fit-time, always side by side with reference implementations."""
