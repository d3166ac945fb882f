"""Benchmarks: throughput and latency percentiles, beside a peer measured in the same run."""
