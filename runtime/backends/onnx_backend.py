"""ONNX Runtime feature backend (CPU; CUDA provider where onnxruntime-gpu is installed)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .. import artifacts
from ..errors import ArtifactError, TrackerInputError
from ..extras import install_hint
from .base import FeatureBackend


def ensure_onnx(model, folder=None) -> Path:
    """The model's verified ONNX set: ``folder`` if given, else the cache, built on first use."""
    if folder is not None:
        artifacts.verify(folder, model, "onnx", "onnx")
        return Path(folder)
    folder = artifacts.default_dir(model, "onnx")
    if _cache_usable(folder, model):
        return folder
    with artifacts.build_lock(folder):
        if _cache_usable(folder, model):  # built by another worker while this one waited
            return folder
        print(f"exporting ONNX artifacts for {len(model.policy.shapes)} buckets into {folder} (first use)...",
              file=sys.stderr, flush=True)
        from export.build import build_onnx

        try:
            build_onnx(model, folder, log=lambda m: print("  " + m, file=sys.stderr, flush=True))
        except OSError as e:
            raise artifacts.cache_write_error(folder, e) from None
        artifacts.verify(folder, model, "onnx", "onnx")
    return folder


def _cache_usable(folder, model) -> bool:
    try:
        artifacts.verify(folder, model, "onnx", "onnx")
        return True
    except ArtifactError:
        return False


class OnnxRuntimeBackend(FeatureBackend):
    name = "onnxruntime"

    def __init__(self, model, device: str = "cpu", artifacts=None):
        super().__init__(model, device)
        try:
            from export.onnx_export import import_onnxruntime

            ort = import_onnxruntime()
        except ImportError:
            raise TrackerInputError(f"the onnxruntime backend needs onnxruntime: {install_hint('export')}") from None
        if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TrackerInputError("--device cuda with onnxruntime needs onnxruntime-gpu (pip install onnxruntime-gpu)")
        from export.onnx_export import onnx_session

        self.folder = ensure_onnx(model, artifacts)
        from ..artifacts import bucket_file, check_feature_shape, rebuild_command

        self.sessions = []
        for b, shape in enumerate(self.policy.shapes):
            path = self.folder / bucket_file(b, shape, "onnx")
            try:
                s = onnx_session(path, device)
            except Exception as e:  # ONNX Runtime's reason, on one line (a file the manifest vouches for)
                lines = str(e).strip().splitlines()
                raise ArtifactError(f"cannot load {path} ({lines[-1] if lines else type(e).__name__}); rebuild "
                                    f"with: {rebuild_command(model, 'onnx', self.folder)}") from None
            if device.startswith("cuda") and "CUDAExecutionProvider" not in s.get_providers():
                # ONNX Runtime falls back to the CPU when its CUDA provider cannot start, saying
                # so only in a log line the session options silence
                raise TrackerInputError(f"--device {device}: ONNX Runtime could not start its CUDA provider (NVIDIA "
                                        f"driver, or the CUDA / cuDNN libraries onnxruntime-gpu needs) and would run "
                                        f"on the CPU; fix the CUDA set-up or use --device cpu")
            fix = f"rebuild with: {rebuild_command(model, 'onnx', self.folder)}"
            name, takes = s.get_inputs()[0].name, tuple(s.get_inputs()[0].shape)
            if all(isinstance(d, int) for d in takes) and takes != (1, 3) + tuple(shape):
                # another bucket's graph under this name (ONNX Runtime's own message is three lines)
                raise ArtifactError(f"{path} takes input {takes}, bucket {b} needs {(1, 3) + tuple(shape)} "
                                    f"(a file of another bucket or model); {fix}")
            # warm-up, and the check that the file computes this bucket's features (another
            # bucket's graph is caught by its input shape above)
            out = s.run(None, {name: np.zeros((1, 3) + tuple(shape), np.float32)})[0]
            check_feature_shape(path, out, model, b, fix)
            self.sessions.append((s, name))

    def extract(self, bucket: int, patch: np.ndarray) -> np.ndarray:
        self._check(bucket, patch)
        s, name = self.sessions[bucket]
        return s.run(None, {name: patch})[0]
