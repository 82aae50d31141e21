"""Throughput benchmarks (see bench/README.md): an installed package beside reproduce/ (bench may import
reproduce and mae; neither imports bench)."""
