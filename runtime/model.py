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
from .errors import ModelError, write_error
from .fork_guard import check_not_forked, mark_mxnet_used

CONFIG = "config.json"
WEIGHTS = "weights.params"
# Statistics of the model's features, stored beside the weights (not network parameters).
FEATURE_COV = "stats_feature_cov"
MANIFEST = "manifest.json"
# the folder of a training run (train_mx.train --out) that holds its latest weights as a model
RUN_CHECKPOINT = "checkpoint"
# RoIAlign's bilinear samples per bin side: what training pools with (train_mx.network's
# default) and what a model that does not record "roi_sample_ratio" (the shipped one) gets.
ROI_SAMPLE_RATIO = 2
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def _shared_dir() -> Path:
    """``$MDTRACK_SHARED``, else a checkout's ``../shared``: the real sequences the benchmarks
    and training use by default, and the ImageNet weights training starts from. Never needed
    to track. (An installed package has no ``..``: there the variable names the folder.)"""
    given = os.environ.get("MDTRACK_SHARED")
    if given:
        try:
            return Path(given).expanduser()
        except RuntimeError:  # "~" with no home folder: as given, and reported as absent
            return Path(given)
    return Path(__file__).resolve().parents[2] / "shared"


SHARED_DIR = _shared_dir()
SHARED_SEQUENCES = SHARED_DIR / "data" / "sequences"


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
        return int(self.config.get("roi_sample_ratio", ROI_SAMPLE_RATIO))

    @property
    def roi_shrink(self) -> float:
        """Patch pixels the network takes off each RoI side before pooling (0: models trained before it existed)."""
        return float(self.config.get("roi_shrink", 0.0))

    @property
    def roi_offset(self) -> float:
        """Patch pixels the network adds to RoI coordinates before pooling (train_mx.network.RF_OFFSET
        centres RoIAlign's bins on the cells' receptive fields; 0: models trained before it existed)."""
        return float(self.config.get("roi_offset", 0.0))

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
    """Write a model folder (weights, config, manifest) and return its path. A write that
    fails is an OSError naming the file (MXNet reports a full disk as an MXNetError)."""
    import mxnet as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Every file is written beside its final name first and renamed only once all three are
    # written: a failed write (a full disk) leaves the previous model loadable.
    tmp = {name: path / f".{name}.{os.getpid()}.tmp" for name in (WEIGHTS, CONFIG, MANIFEST)}
    try:
        arrays = {k: mx.nd.array(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        try:
            mx.nd.save(str(tmp[WEIGHTS]), arrays)
        except mx.base.MXNetError as e:
            raise write_error(path / WEIGHTS, e) from None
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
        what = "is a file, not a model folder" if path.exists() else "not found"
        raise ModelError(f"model folder {what}: {path} (pass --model DIR, or Tracker(model=DIR), e.g. models/default)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        if (path / RUN_CHECKPOINT / MANIFEST).is_file():
            raise ModelError(f"{path} is a training run's folder, not a model: its latest weights are the model "
                             f"{path / RUN_CHECKPOINT} (or the run's --save-model folder)")
        raise ModelError(f"{mpath} is missing: the model folder is incomplete; restore it or retrain")
    try:
        manifest = json.loads(mpath.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{mpath} is not a valid manifest ({e}); restore the model folder") from None
    if manifest.get("kind") in ("onnx", "tvm") and "model_hash" in manifest:
        raise ModelError(f"{path} is a compiled artifact set, not a model folder: pass it with --artifacts "
                         f"(Tracker(artifacts=...)) and the model it was built from with --model")
    for name in (CONFIG, WEIGHTS):
        f = path / name
        if name not in files:
            raise ModelError(f"{mpath} does not list {name}; restore the model folder")
        if not f.is_file():
            raise ModelError(f"{f} is missing; restore the model folder (git checkout or re-download)")
        if sha256_file(f) != files[name]:
            raise ModelError(f"{f} does not match its sha256 in {MANIFEST} (corrupt or modified); restore it")
    check_not_forked()
    try:
        config = json.loads((path / CONFIG).read_text())
        mark_mxnet_used()  # from here a forked child's MXNet would hang
        params = {k: v.asnumpy() for k, v in mx.nd.load(str(path / WEIGHTS)).items()}
    except Exception as e:  # a hashed file that still fails to parse was written wrongly
        lines = str(e).strip().splitlines()  # MXNet errors carry a C++ traceback: keep the last line
        reason = lines[-1] if lines else type(e).__name__
        raise ModelError(f"{path}: cannot read the model ({reason}); retrain or restore it") from None
    _check_config(path / CONFIG, config)
    _check_params(path / WEIGHTS, config, params)
    return Model(path=path, config=config, params=params, model_hash=_model_hash(files))


def _number(value, integer: bool = False) -> bool:
    """A JSON number (not a bool, not a string that looks like one), finite, and whole
    where ``integer``: what save_model writes; anything else was edited by hand or damaged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    return not integer or float(value).is_integer()


def _check_config(cpath: Path, config) -> None:
    """The config keys every part of the runtime reads, present and well-formed, so a damaged
    config fails here with its name instead of deep inside the tracker (or, worse, tracks
    with a value silently converted: a bucket side of 192.5 read as 192, "nan" as a mean)."""
    def bad(what):
        return ModelError(f"{cpath}: {what}; restore the model folder or retrain")

    if not isinstance(config, dict):
        raise bad("is not a JSON object")
    for key in ("extractor", "buckets", "mean_bgr", "feature_channels"):
        if key not in config:
            raise bad(f"lacks {key!r}")
    from train_mx.network import EXTRACTORS, STRIDE

    if not isinstance(config["extractor"], str) or config["extractor"] not in EXTRACTORS:
        raise bad(f"names extractor {config['extractor']!r}, not one of {', '.join(EXTRACTORS)}")
    b = config["buckets"]
    if not isinstance(b, dict):
        raise bad(f"'buckets' must be an object with 'shapes', 'target_size' and 'context', got {b!r}")
    for key in ("shapes", "target_size", "context"):
        if key not in b:
            raise bad(f"'buckets' lacks {key!r}")
    shapes = b["shapes"]
    if not (isinstance(shapes, list) and shapes
            and all(isinstance(s, list) and len(s) == 2 and all(_number(v, True) for v in s) for s in shapes)):
        raise bad(f"'buckets' 'shapes' must be a list of [height, width] whole numbers, got {shapes!r}")
    for key, default in (("target_size", None), ("context", None), ("max_upscale", BucketPolicy.max_upscale)):
        v = b.get(key, default)
        if not _number(v) or v <= 0:
            raise bad(f"'buckets' {key!r} must be a number > 0, got {v!r}")
    if b.get("stride", STRIDE) != STRIDE:
        raise bad(f"'buckets' 'stride' is {b['stride']!r}, but the extractors' feature map has stride {STRIDE}")
    try:
        BucketPolicy.from_dict(b)
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise bad(f"has an unusable 'buckets' entry ({e})") from None
    mean, channels = config["mean_bgr"], config["feature_channels"]
    if not (isinstance(mean, list) and len(mean) == 3 and all(_number(v) for v in mean)):
        raise bad(f"'mean_bgr' must hold 3 numbers (B, G, R), got {mean!r}")
    if not _number(channels, True) or channels < 1:
        raise bad(f"'feature_channels' must be a whole number > 0, got {channels!r}")
    # optional keys (absent in models written before they existed): the defaults of Model's properties
    for key, ok, want in (("feature_scale", lambda v: _number(v) and v > 0, "a number > 0"),
                          ("roi_shrink", lambda v: _number(v) and v >= 0, "a number >= 0"),
                          ("roi_offset", lambda v: _number(v) and abs(v) < STRIDE, f"a number between -{STRIDE} and {STRIDE}"),
                          ("roi_sample_ratio", lambda v: _number(v, True), "a whole number")):
        if key in config and not ok(config[key]):
            raise bad(f"{key!r} must be {want}, got {config[key]!r}")


def _check_params(wpath: Path, config: dict, params: dict) -> None:
    """Every array the extractor and the fc head read, present with the shape the config
    implies and finite: weights of another model or width (fc4 for 512 channels beside a
    256-channel config) otherwise fail as an MXNet or ONNX shape error at the first frame."""
    from train_mx import network

    def bad(what, why="the weights do not belong to this config.json: "):
        return ModelError(f"{wpath}: {what}; {why}restore the model folder or retrain")

    name, c = config["extractor"], int(config["feature_channels"])
    feat, produces = network.extractor(name)
    if produces != c:
        raise ModelError(f"{wpath.parent / CONFIG}: 'feature_channels' is {c}, but extractor {name!r} gives "
                         f"{produces}; restore the model folder or retrain")
    h, w = config["buckets"]["shapes"][0]
    arg_shapes, _, _ = feat.infer_shape(data=(1, 3, int(h), int(w)))
    want = {n: tuple(s) for n, s in zip(feat.list_arguments(), arg_shapes) if n != "data"}
    fc = network.FC_DIM
    want.update(fc4_weight=(fc, c * 9), fc4_bias=(fc,), fc5_weight=(fc, fc), fc5_bias=(fc,))
    for key, shape in want.items():
        if key not in params:
            raise bad(f"lacks {key} (extractor {name!r} with an fc head needs it)")
        if tuple(params[key].shape) != shape:
            raise bad(f"{key} has shape {tuple(params[key].shape)}, {name!r} with {c} feature channels needs {shape}")
    cov = params.get(FEATURE_COV)
    if cov is not None and tuple(cov.shape) != (c, c):
        raise bad(f"{FEATURE_COV} has shape {tuple(cov.shape)}, {c} feature channels need {(c, c)}")
    for key in list(want) + ([FEATURE_COV] if cov is not None else []):
        if not np.isfinite(params[key]).all():
            raise bad(f"{key} holds NaN or infinite values (a diverged or damaged training run)", "")
