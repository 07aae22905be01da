"""Conv extractor -> ONNX, one file per bucket shape, through MXNet's own exporter.

Each exported graph is checked with ``onnx.checker`` and its ONNX Runtime output compared
with MXNet's on the same patch before anything downstream uses it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .onnx_compat import install as _install_compat


class ParityError(RuntimeError):
    pass


# ONNX Runtime 1.29 and later send usage telemetry from Linux by default and keep a device id
# and an event queue under ~/.cache/Microsoft: not what a tracker on a board or in a service
# should do (and with no writable HOME it printed a warning before the tools' own lines). The
# variable must be set before ONNX Runtime starts; a user's own setting wins.
TELEMETRY_OPT_OUT = ("ORT_DISABLE_TELEMETRY", "1")


def import_onnxruntime():
    """The onnxruntime module, its telemetry off unless the environment says otherwise."""
    name, value = TELEMETRY_OPT_OUT
    if not os.environ.get(name):  # unset or empty (as MDTRACK_CACHE, empty is unset)
        os.environ[name] = value
    import onnxruntime

    return onnxruntime


# onnx 1.23 stamps its newest versions (IR 14, opset 28), which older runtimes refuse outright
# ("Unsupported model IR version: 14", ONNX Runtime 1.23 and earlier, as on a board's own build).
# The extractors use only these ops on float32 (LRN: VGG-M), whose float semantics are those
# of opset 13, so their files declare opset 13 / IR 7 (ONNX Runtime 1.6 and later); onnx.checker
# then checks the nodes against the opset-13 schemas and the parity check the numbers. A graph
# with any other op keeps the exporter's versions.
PORTABLE_OPSET, PORTABLE_IR = 13, 7
PORTABLE_OPS = frozenset({"Conv", "MaxPool", "Concat", "Mul", "Relu", "LRN"})


def make_portable(m) -> bool:
    """Declare ``m`` at PORTABLE_OPSET / PORTABLE_IR where its ops allow; whether it did."""
    if {n.op_type for n in m.graph.node} - PORTABLE_OPS or any(o.domain not in ("", "ai.onnx")
                                                              for o in m.opset_import):
        return False
    for o in m.opset_import:
        o.version = min(o.version, PORTABLE_OPSET)
    m.ir_version = min(m.ir_version, PORTABLE_IR)
    return True


def export_bucket(model, bucket: int, path) -> Path:
    """Write the extractor for ``bucket``'s (1, 3, H, W) input to ``path`` (.onnx)."""
    _install_compat()
    import mxnet as mx
    import onnx

    from train_mx import network

    h, w = model.policy.shapes[bucket]
    sym, _ = network.extractor(model.extractor, feature_scale=model.feature_scale)
    params = {k: mx.nd.array(v) for k, v in model.extractor_params().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.onnx.export_model(sym, params, [(1, 3, h, w)], [np.float32], str(path), verbose=False, dynamic=False)
    m = onnx.load(str(path))
    # MXNet lists every weight as a graph input too; keep only the patch as an input so
    # that runtimes treat weights as constants (folding, no per-call binding).
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    make_portable(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def onnx_session(path, device: str = "cpu"):
    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # ORT's workers spin after each run; in the tracker MXNet's head runs next on the same
    # cores, and the spinning slowed it 1.5x (benchmarks/README.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def check_parity(model, bucket: int, path, mx_backend, seed: int = 0, rtol: float = 1e-4) -> float:
    """Max abs difference between ONNX Runtime and MXNet, relative to the feature scale.

    Raises :class:`ParityError` above ``rtol``. The patch is uniform in [-128, 128], the
    range of a mean-subtracted image.
    """
    h, w = model.policy.shapes[bucket]
    x = np.random.default_rng(seed).uniform(-128, 128, (1, 3, h, w)).astype(np.float32)
    sess = onnx_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = mx_backend.extract(bucket, x)
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    if rel > rtol:
        raise ParityError(f"{path}: ONNX Runtime differs from MXNet by {rel:.2e} of the feature scale (limit {rtol:.0e})")
    return rel
