"""MXNet 1.9's ONNX exporter imports ``onnx.mapping``, which onnx >= 1.15 removed.

``install()`` puts back the two tables the exporter reads, built from ``onnx.helper``,
before ``mx.onnx`` is imported. Nothing else of onnx is patched.
"""
from __future__ import annotations

import sys
import types


def install() -> None:
    import onnx

    if hasattr(onnx, "mapping") or "onnx.mapping" in sys.modules:
        return
    from onnx import helper

    mapping = types.ModuleType("onnx.mapping")
    tensor_to_np = {}
    for name, code in onnx.TensorProto.DataType.items():
        if code == 0:
            continue
        try:
            tensor_to_np[code] = helper.tensor_dtype_to_np_dtype(code)
        except Exception:  # types numpy cannot represent (e.g. string in some builds)
            continue
    mapping.TENSOR_TYPE_TO_NP_TYPE = tensor_to_np
    np_to_tensor = {}
    for code, dt in tensor_to_np.items():
        np_to_tensor.setdefault(dt, code)
    mapping.NP_TYPE_TO_TENSOR_TYPE = np_to_tensor
    sys.modules["onnx.mapping"] = mapping
    onnx.mapping = mapping
