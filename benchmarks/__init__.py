"""Benchmarks: model-level and end-to-end latency/throughput, the naive baseline server, reports."""
