"""Benchmarks of pouw against this machine and the paper."""
