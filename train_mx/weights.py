"""Pretrained-weight import: ImageNet SqueezeNet v1.1 (Keras HDF5) and VGG-M (MatConvNet).

Both return ``{mxnet_param_name: float32 array}`` in MXNet's (cout, cin, kh, kw) layout,
named as in :mod:`train_mx.network`. A file that is not those weights raises
:class:`TrackerInputError` naming it, so that training refuses it in one line before it
loads any data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import TrackerInputError

SQUEEZENET_LAYERS = ["conv1"] + [
    f"fire{i}_{part}" for i in (2, 3, 4, 5) for part in ("squeeze1x1", "expand1x1", "expand3x3")
]
SQUEEZENET_WANT = "keras-squeezenet's ImageNet SqueezeNet v1.1 HDF5 (squeezenet_v1.1_notop.h5)"
VGGM_WANT = "MatConvNet's imagenet-vgg-m.mat"


def default_squeezenet_path() -> Path:
    from runtime.model import SHARED_DIR

    return SHARED_DIR / "weights" / "squeezenet_v1.1_notop.h5"


def _not(path, want: str, why: str) -> TrackerInputError:
    return TrackerInputError(f"pretrained weights {path} {why}; pass --pretrained with {want}")


def load_squeezenet_h5(path) -> dict:
    """Read conv1 and fire2-fire5 from the keras-squeezenet HDF5 file.

    Keras stores kernels as (kh, kw, cin, cout) under group paths like
    ``fire2/squeeze1x1/...``; the kernel is the 4-d dataset and the bias the 1-d one.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SqueezeNet weights not found: {path}")
    if not h5py.is_hdf5(path):
        raise _not(path, SQUEEZENET_WANT, "is not an HDF5 file")
    out = {}
    with h5py.File(path, "r") as f:
        for layer in SQUEEZENET_LAYERS:
            key = layer.replace("_", "/", 1)
            group = f.get(key)
            if not isinstance(group, h5py.Group):
                raise _not(path, SQUEEZENET_WANT, f"has no SqueezeNet layer {key}")
            arrays = []
            group.visititems(lambda n, o: arrays.append(np.asarray(o)) if hasattr(o, "shape") else None)
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(kernels) != 1 or len(biases) != 1:
                raise _not(path, SQUEEZENET_WANT, f"has {len(kernels)} kernels and {len(biases)} biases in "
                                                  f"layer {key}, not one of each")
            out[f"{layer}_weight"] = np.ascontiguousarray(kernels[0].transpose(3, 2, 0, 1), dtype=np.float32)
            out[f"{layer}_bias"] = biases[0].astype(np.float32)
    return check_shapes(out, "squeezenet", path)


def load_vggm_mat(path) -> dict:
    """Read conv1-conv3 from MatConvNet's ``imagenet-vgg-m.mat`` (as py-MDNet does).

    Layers 0, 4 and 8 of ``layers`` are conv1-3; filters are (kh, kw, cin, cout).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy's parser fails on a foreign file in many ways (IndexError, ValueError, ...)
        raise _not(path, VGGM_WANT, f"cannot be read as a MATLAB file ({e})") from None
    if "layers" not in mat:
        raise _not(path, VGGM_WANT, "holds no MatConvNet 'layers'")
    out = {}
    try:
        layers = mat["layers"][0]
        for name, idx in (("conv1", 0), ("conv2", 4), ("conv3", 8)):
            weight, bias = layers[idx]["weights"].item()[0]
            out[f"{name}_weight"] = np.ascontiguousarray(np.transpose(weight, (3, 2, 0, 1)), dtype=np.float32)
            out[f"{name}_bias"] = np.asarray(bias, dtype=np.float32).reshape(-1)
    except (IndexError, KeyError, TypeError, ValueError) as e:  # another network's layer list
        raise _not(path, VGGM_WANT, f"does not hold VGG-M's conv1-conv3 as 'layers' 0, 4 and 8 ({e})") from None
    return check_shapes(out, "vggm", path)


def load_pretrained(extractor: str, path) -> dict:
    """The ImageNet weights of ``extractor`` from ``path``, checked against the network."""
    return load_squeezenet_h5(path) if extractor == "squeezenet" else load_vggm_mat(path)


def check_shapes(weights: dict, extractor: str, path) -> dict:
    """``weights`` if every tensor has the shape ``extractor``'s network gives it (another
    version's, SqueezeNet v1.0's 7x7x96 conv1, would otherwise fail in set_params)."""
    from . import network

    feat, _ = network.extractor(extractor)
    arg_shapes, _, _ = feat.infer_shape(data=(1, 3, 64, 64))
    want = {n: tuple(s) for n, s in zip(feat.list_arguments(), arg_shapes)}
    name = SQUEEZENET_WANT if extractor == "squeezenet" else VGGM_WANT
    for key, value in weights.items():
        if tuple(value.shape) != want.get(key):
            raise _not(path, name, f"gives {key} shape {tuple(value.shape)}, the {extractor} network needs "
                                   f"{want.get(key)}")
    return weights
