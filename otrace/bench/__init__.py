"""Benchmarks behind `otrace bench`."""
