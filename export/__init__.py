"""Deployment export: conv extractor -> ONNX per bucket (parity-checked) -> TVM libraries
per target, each set with a manifest; MetaSchedule tuning databases under ``tuning/``."""
