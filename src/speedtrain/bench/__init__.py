"""Measure variants of a bundle (latency, throughput, memory) and report it (json, markdown, plot)."""
