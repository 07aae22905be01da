"""Pretrained-weight import: ImageNet SqueezeNet v1.1 (Keras HDF5) and VGG-M (MatConvNet).

Both return ``{mxnet_param_name: float32 array}`` in MXNet's (cout, cin, kh, kw) layout,
named as in :mod:`train_mx.network`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SQUEEZENET_LAYERS = ["conv1"] + [
    f"fire{i}_{part}" for i in (2, 3, 4, 5) for part in ("squeeze1x1", "expand1x1", "expand3x3")
]


def default_squeezenet_path() -> Path:
    from runtime.model import SHARED_DIR

    return SHARED_DIR / "weights" / "squeezenet_v1.1_notop.h5"


def load_squeezenet_h5(path) -> dict:
    """Read conv1 and fire2-fire5 from the keras-squeezenet HDF5 file.

    Keras stores kernels as (kh, kw, cin, cout) under group paths like
    ``fire2/squeeze1x1/...``; the kernel is the 4-d dataset and the bias the 1-d one.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SqueezeNet weights not found: {path}")
    out = {}
    with h5py.File(path, "r") as f:
        for layer in SQUEEZENET_LAYERS:
            group = f[layer.replace("_", "/", 1)] if layer != "conv1" else f["conv1"]
            arrays = []
            group.visititems(lambda n, o: arrays.append(np.asarray(o)) if hasattr(o, "shape") else None)
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(kernels) != 1 or len(biases) != 1:
                raise ValueError(f"{path}: layer {layer} has {len(kernels)} kernels and {len(biases)} biases")
            out[f"{layer}_weight"] = np.ascontiguousarray(kernels[0].transpose(3, 2, 0, 1), dtype=np.float32)
            out[f"{layer}_bias"] = biases[0].astype(np.float32)
    return out


def load_vggm_mat(path) -> dict:
    """Read conv1-conv3 from MatConvNet's ``imagenet-vgg-m.mat`` (as py-MDNet does).

    Layers 0, 4 and 8 of ``layers`` are conv1-3; filters are (kh, kw, cin, cout).
    """
    import scipy.io

    mat = scipy.io.loadmat(str(path))
    layers = mat["layers"][0]
    out = {}
    for name, idx in (("conv1", 0), ("conv2", 4), ("conv3", 8)):
        weight, bias = layers[idx]["weights"].item()[0]
        out[f"{name}_weight"] = np.ascontiguousarray(np.transpose(weight, (3, 2, 0, 1)), dtype=np.float32)
        out[f"{name}_bias"] = np.asarray(bias, dtype=np.float32).reshape(-1)
    return out
