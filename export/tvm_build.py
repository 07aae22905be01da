"""ONNX -> TVM Relax -> compiled library, one per (bucket, target).

Builds apply the committed MetaSchedule database of their target
(``export/tuning/<target>/``) and never tune; targets without a database compile with
TVM's default schedules.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

TUNING_ROOT = Path(__file__).resolve().parent / "tuning"
DB_FILES = ("database_workload.json", "database_tuning_record.json")


def tuning_dir(target_name: str) -> Path:
    return TUNING_ROOT / target_name


def tuning_db(target_name: str, folder=None):
    """(folder, sha256 over its files) of the committed database, or (None, None); with
    ``folder``, that database (one ``export.tune --db`` wrote), which must hold its files."""
    d = tuning_dir(target_name) if folder is None else Path(folder).expanduser()
    if not all((d / f).is_file() for f in DB_FILES):
        if folder is not None:
            raise ValueError(f"--tuning-db {folder} holds no MetaSchedule database ({' and '.join(DB_FILES)}); "
                             f"tune into it with: python -m export.tune --target {target_name} --db {folder}")
        return None, None
    h = hashlib.sha256()
    for f in DB_FILES:
        h.update((d / f).read_bytes())
    return d, h.hexdigest()


def tuned_buckets(db_dir) -> set:
    """Bucket shapes ("HxW") that a tuning run of ``export.tune`` recorded for ``db_dir``: a
    database can hold some buckets only (a tuning time budget), the rest use TVM's defaults."""
    import json

    try:
        runs = json.loads((Path(db_dir) / "tuning_log.json").read_text()) if db_dir else []
    except (OSError, ValueError):
        return set()
    return {shape for run in runs if isinstance(run, dict) and isinstance(run.get("buckets"), dict)
            for shape, rec in run["buckets"].items() if isinstance(rec, dict) and rec.get("records")}


def import_onnx(onnx_path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=False)


def compile_module(mod, target, db_dir=None):
    """Apply the database (if any) and compile; returns a relax VM executable."""
    import tvm
    from tvm import relax

    tvm_target = target.tvm_target()
    with tempfile.TemporaryDirectory() as empty:
        work = str(db_dir) if db_dir is not None else empty
        with tvm_target:
            mod = relax.get_pipeline("static_shape_tuning", total_trials=0, target=tvm_target, work_dir=work)(mod)
            return tvm.compile(mod, target=tvm_target)


def export_library(executable, path, target) -> Path:
    kw = {}
    if target.cross:
        from tvm.support import cc

        from .targets import CROSS_CC

        kw["fcompile"] = cc.cross_compiler(CROSS_CC[target.cross])
    path = Path(path)
    executable.export_library(str(path), **kw)
    return path


def build_bucket(onnx_path, target, out_path, db_dir=None) -> Path:
    return export_library(compile_module(import_onnx(onnx_path), target, db_dir), out_path, target)
