"""The export flow for one model: ONNX per bucket (checked), then TVM per target."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from runtime import artifacts
from runtime.artifacts import bucket_file

from . import targets as targets_mod
from .onnx_export import check_parity, export_bucket


def build_onnx(model, out, log=print) -> Path:
    """Export every bucket to ``out`` (an artifact set of kind 'onnx'), parity-checked."""
    from runtime.backends.mxnet_backend import MXNetBackend

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = MXNetBackend(model)
    files, parity = [], {}
    for b, shape in enumerate(model.policy.shapes):
        name = bucket_file(b, shape, "onnx")
        export_bucket(model, b, out / name)
        parity[name] = check_parity(model, b, out / name, ref)
        files.append(name)
        log(f"onnx  bucket {b} {shape[0]}x{shape[1]}: parity {parity[name]:.1e} of feature scale")
    artifacts.write_manifest(out, model, "onnx", "onnx", None, files, {"parity_vs_mxnet": parity})
    return out


def build_tvm(model, target, onnx_dir, out, log=print) -> Path:
    """Compile every bucket of ``onnx_dir`` for ``target`` into ``out`` (kind 'tvm')."""
    from .tvm_build import build_bucket, tuning_db

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db_dir, db_hash = tuning_db(target.name)
    files = []
    for b, shape in enumerate(model.policy.shapes):
        t0 = time.time()
        name = bucket_file(b, shape, "so")
        build_bucket(Path(onnx_dir) / bucket_file(b, shape, "onnx"), target, out / name, db_dir)
        files.append(name)
        log(f"tvm   {target.name:18s} bucket {b} {shape[0]}x{shape[1]}: {time.time() - t0:.1f} s"
            f"{' (tuned)' if db_dir else ' (untuned)'}")
    extra = {"tuning_db": str(db_dir.relative_to(Path(__file__).resolve().parents[1])) if db_dir else None,
             "tuning_db_sha256": db_hash, "device": target.device, "cross": target.cross}
    artifacts.write_manifest(out, model, "tvm", target.name, target.resolved(), files, extra)
    return out


def build(model, target_names, out=None, log=print) -> dict:
    """ONNX set plus one TVM set per target under ``out``; returns {name: folder}."""
    out = Path(out) if out is not None else artifacts.default_dir(model, "onnx", "onnx").parent
    onnx_dir = build_onnx(model, out / "onnx", log)
    done = {"onnx": onnx_dir}
    for t in target_names:
        target = targets_mod.parse(t) if isinstance(t, str) else t
        done[target.name] = build_tvm(model, target, onnx_dir, out / target.name, log)
    return done
