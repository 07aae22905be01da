"""Feature backends: the conv extractor behind one interface, loaded lazily by name.

MXNet is the reference; ONNX Runtime and TVM import only when asked for, so the runtime
works with numpy, OpenCV and MXNet alone.
"""
from __future__ import annotations

from .base import FeatureBackend

BACKENDS = ("mxnet", "onnxruntime", "tvm")


def make_backend(name: str, model, device: str = "cpu", **kw) -> FeatureBackend:
    from ..devices import parse_device
    from ..errors import TrackerInputError

    device = parse_device(device)
    if name == "mxnet":
        from .mxnet_backend import MXNetBackend

        return MXNetBackend(model, device=device, **kw)
    if name == "onnxruntime":
        from .onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device=device, **kw)
    if name == "tvm":
        from .tvm_backend import TVMBackend

        return TVMBackend(model, device=device, **kw)
    raise TrackerInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
