"""Deployment export: conv extractor -> ONNX per bucket (parity-checked) -> TVM libraries
per target, each set with a manifest; MetaSchedule tuning databases under ``tuning/``."""
from __future__ import annotations


def missing_packages(modules: dict, extra: str = "export") -> str | None:
    """``None`` when every module of ``{module: pip package}`` imports, else one line naming the
    missing packages and how to install ``extra`` (a tool checks before any work)."""
    import importlib.util

    from runtime.extras import install_hint

    missing = [pkg for mod, pkg in modules.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed; {install_hint(extra)}"


EXPORT_PACKAGES = {"onnx": "onnx", "onnxruntime": "onnxruntime"}
TVM_PACKAGES = {"tvm": "apache-tvm"}
TUNE_PACKAGES = {**EXPORT_PACKAGES, **TVM_PACKAGES, "xgboost": "xgboost", "psutil": "psutil",
                 "cloudpickle": "cloudpickle"}
