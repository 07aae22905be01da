"""Benchmarks: per-frame cost across backends and one-pass accuracy against peer trackers."""
