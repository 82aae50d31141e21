"""Throughput benchmarks (see bench/README.md); importable so reproduce/ scripts can call them."""
