"""Benchmarks for the broker: lean load-generating clients and runnable scenarios."""
