"""Model folders: weights, config and a manifest of sha256 hashes.

A model folder holds ``config.json`` (extractor, bucket policy, normalisation),
``weights.params`` (MXNet's binary NDArray format: plain tensors, nothing executable,
no pickle) and ``manifest.json`` (sha256 of each file). Loading checks every hash, so a
truncated download or a swapped file is refused before anything runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .buckets import BucketPolicy
from .errors import ModelError

CONFIG = "config.json"
WEIGHTS = "weights.params"
# Statistics of the model's features, stored beside the weights (not network parameters).
FEATURE_COV = "stats_feature_cov"
MANIFEST = "manifest.json"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Model:
    path: Path
    config: dict
    params: dict  # name -> numpy float32 array
    model_hash: str

    @property
    def extractor(self) -> str:
        return self.config["extractor"]

    @property
    def policy(self) -> BucketPolicy:
        return BucketPolicy.from_dict(self.config["buckets"])

    @property
    def mean(self) -> np.ndarray:
        """Per-channel value subtracted from BGR patches (in BGR order)."""
        return np.asarray(self.config["mean_bgr"], dtype=np.float32)

    @property
    def feature_scale(self) -> float:
        return float(self.config.get("feature_scale", 1.0))

    @property
    def roi_sample_ratio(self) -> int:
        return int(self.config.get("roi_sample_ratio", 2))

    @property
    def roi_shrink(self) -> float:
        """Patch pixels the network takes off each RoI side before pooling (0: models trained before it existed)."""
        return float(self.config.get("roi_shrink", 0.0))

    @property
    def channels(self) -> int:
        return int(self.config["feature_channels"])

    @property
    def feature_cov(self):
        """(C, C) second moment of the extractor's features over the training sequences, or
        None (``python -m train_mx.feature_stats`` adds it); the head's fc4 factorisation
        weighs its approximation error by it."""
        return self.params.get(FEATURE_COV)

    def extractor_params(self) -> dict:
        return {k: v for k, v in self.params.items() if not k.startswith(("fc", "stats_"))}

    def head_params(self) -> dict:
        return {k: v for k, v in self.params.items() if k.startswith("fc")}


def save_model(path, config: dict, params: dict) -> Path:
    """Write a model folder (weights, config, manifest) and return its path."""
    import mxnet as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Every file is written beside its final name first and renamed only once all three are
    # written: a failed write (a full disk) leaves the previous model loadable.
    tmp = {name: path / f".{name}.{os.getpid()}.tmp" for name in (WEIGHTS, CONFIG, MANIFEST)}
    try:
        mx.nd.save(str(tmp[WEIGHTS]), {k: mx.nd.array(np.asarray(v, dtype=np.float32)) for k, v in params.items()})
        tmp[CONFIG].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        files = {name: sha256_file(tmp[name]) for name in (CONFIG, WEIGHTS)}
        manifest = {"format": 1, "files": files, "model_hash": _model_hash(files)}
        tmp[MANIFEST].write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS, CONFIG, MANIFEST):  # the manifest last: it vouches for the others
            os.replace(tmp[name], path / name)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    return path


def _model_hash(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def load_model(path=None) -> Model:
    """Load and verify a model folder; raises :class:`ModelError` with what to do."""
    import mxnet as mx

    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_dir():
        raise ModelError(f"model folder not found: {path} (pass --model DIR, e.g. models/default)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ModelError(f"{mpath} is missing: the model folder is incomplete; restore it or retrain")
    try:
        manifest = json.loads(mpath.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{mpath} is not a valid manifest ({e}); restore the model folder") from None
    for name in (CONFIG, WEIGHTS):
        f = path / name
        if name not in files:
            raise ModelError(f"{mpath} does not list {name}; restore the model folder")
        if not f.is_file():
            raise ModelError(f"{f} is missing; restore the model folder (git checkout or re-download)")
        if sha256_file(f) != files[name]:
            raise ModelError(f"{f} does not match its sha256 in {MANIFEST} (corrupt or modified); restore it")
    try:
        config = json.loads((path / CONFIG).read_text())
        params = {k: v.asnumpy() for k, v in mx.nd.load(str(path / WEIGHTS)).items()}
    except Exception as e:  # a hashed file that still fails to parse was written wrongly
        lines = str(e).strip().splitlines()  # MXNet errors carry a C++ traceback: keep the last line
        reason = lines[-1] if lines else type(e).__name__
        raise ModelError(f"{path}: cannot read the model ({reason}); retrain or restore it") from None
    _check_config(path / CONFIG, config)
    return Model(path=path, config=config, params=params, model_hash=_model_hash(files))


def _check_config(cpath: Path, config) -> None:
    """The config keys every part of the runtime reads, present and well-formed, so a damaged
    config fails here with its name instead of deep inside the tracker."""
    def bad(what):
        return ModelError(f"{cpath}: {what}; restore the model folder or retrain")

    if not isinstance(config, dict):
        raise bad("is not a JSON object")
    for key in ("extractor", "buckets", "mean_bgr", "feature_channels"):
        if key not in config:
            raise bad(f"lacks {key!r}")
    from train_mx.network import EXTRACTORS

    if config["extractor"] not in EXTRACTORS:
        raise bad(f"names extractor {config['extractor']!r}, not one of {', '.join(EXTRACTORS)}")
    try:
        BucketPolicy.from_dict(config["buckets"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"has an unusable 'buckets' entry ({e})") from None
    try:
        mean = np.asarray(config["mean_bgr"], dtype=np.float32)
        channels = int(config["feature_channels"])
    except (TypeError, ValueError) as e:
        raise bad(f"has an unusable 'mean_bgr' or 'feature_channels' ({e})") from None
    if mean.shape != (3,) or channels < 1:
        raise bad(f"'mean_bgr' must hold 3 numbers and 'feature_channels' be positive, got "
                  f"{config['mean_bgr']!r} and {config['feature_channels']!r}")
