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
    ``folder``, the user's own database (checked first by :func:`check_user_db`)."""
    d = tuning_dir(target_name) if folder is None else Path(folder).expanduser()
    if not all((d / f).is_file() for f in DB_FILES):
        if folder is not None:
            raise ValueError(f"--tuning-db {folder} holds no MetaSchedule database")
        return None, None
    h = hashlib.sha256()
    for f in DB_FILES:
        h.update((d / f).read_bytes())
    return d, h.hexdigest()


def _kind(t) -> str:
    """A TVM target as a database's records are compatible with it: its kind, and a CUDA
    target's architecture (a CPU's records schedule any CPU's kernels, if not as fast)."""
    arch = t.attrs.get("arch") if t.kind.name == "cuda" else None
    return f"{t.kind.name} {arch}" if arch else t.kind.name


def check_user_db(folder, target, flag: str, must_hold_one: bool = True) -> Path:
    """A user's database folder for the CompileTarget ``target``, or a ValueError naming what
    it is instead: a file, an artifact set, a damaged database, one whose records are for
    another kind of target (TVM's compiler fails on the first kernel with them), or
    (``must_hold_one``) a folder without a database. The records say what they were tuned
    for, whatever the folder or its log is called."""
    from runtime.artifacts import _target_arg

    d = Path(folder).expanduser()
    tune = "the folder that python -m export.tune --db DIR wrote"
    if d.is_file():
        raise ValueError(f"{flag} {folder} is a file; give {tune}")
    if (d / "manifest.json").is_file():
        raise ValueError(f"{flag} {folder} is an artifact set, not a tuning database; give {tune}")
    if not all((d / f).is_file() for f in DB_FILES):
        if must_hold_one:
            raise ValueError(f"{flag} {folder} holds no MetaSchedule database ({' and '.join(DB_FILES)}); give {tune}")
        return d
    from tvm.s_tir import meta_schedule as ms

    try:
        recs = ms.database.JSONDatabase(work_dir=str(d)).get_all_tuning_records()
    except Exception as e:  # TVM's parser raises RuntimeError / ValueError / TVMError on a damaged file
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise ValueError(f"{flag} {folder} is not a readable MetaSchedule database ({last[:200]}); tune into a new "
                         "folder or restore it") from None
    want = _kind(target.tvm_target())
    others = sorted({_kind(r.target) for r in recs} - {want})
    if others:
        raise ValueError(f"{flag} {folder} holds records tuned for {', '.join(others)}, not {want} "
                         f"({_target_arg(target.name)}); give a database tuned for that target, in a folder of its own")
    return d


# MetaSchedule records a candidate that failed to build or run with 1e10 s run times
FAILED_RUN_SECS = 1e9


def measured(rec) -> bool:
    """A record with a real measurement (not a failed build or run)."""
    secs = [float(getattr(s, "value", s)) for s in (rec.run_secs or [])]
    return bool(secs) and min(secs) < FAILED_RUN_SECS


def copy_records(src_dir, dst, skip=frozenset(), seen=None) -> int:
    """Commit ``src_dir``'s measured records into the database ``dst``, leaving out those of
    the workloads in ``skip`` (structural hashes), and add the copied ones' to ``seen``;
    returns how many records were copied."""
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash  # TVM's own hash of workloads, as MetaSchedule's databases use

    n = 0
    for rec in ms.database.JSONDatabase(work_dir=str(src_dir)).get_all_tuning_records():
        key = structural_hash(rec.workload.mod)
        if measured(rec) and key not in skip:
            dst.commit_tuning_record(ms.database.TuningRecord(
                rec.trace, dst.commit_workload(rec.workload.mod), rec.run_secs, rec.target, rec.args_info))
            n += 1
            if seen is not None:
                seen.add(key)
    return n


def layer_databases(top_dir, base_dir, into) -> Path:
    """A database in ``into`` holding ``top_dir``'s records and, for every kernel those leave
    out, ``base_dir``'s: a user's database tuned for a few buckets or kernels keeps the
    committed schedules for the rest (TVM's defaults ran the tracker 7x slower here)."""
    from tvm.s_tir import meta_schedule as ms

    Path(into).mkdir(parents=True, exist_ok=True)
    dst = ms.database.JSONDatabase(work_dir=str(into))
    mine = set()
    copy_records(top_dir, dst, seen=mine)
    if base_dir is not None:
        copy_records(base_dir, dst, skip=mine)
    return Path(into)


def prepare(mod, target):
    """The passes the build's static_shape_tuning pipeline runs before it looks up the
    database, so that tuned workloads match the ones the build asks for."""
    import tvm
    from tvm import relax

    with target.tvm_target():
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.get_pipeline("zero")])(mod)


def scheduled_kernels(db_dir) -> set:
    """The kernels (structural hashes of their workloads) ``db_dir`` holds a measured
    schedule for; an empty set for None."""
    if db_dir is None:
        return set()
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    return {structural_hash(r.workload.mod) for r in ms.database.JSONDatabase(work_dir=str(db_dir)).get_all_tuning_records()
            if measured(r)}


def tuned_kernels(mod, target, kernels: set) -> tuple:
    """(how many of ``mod``'s kernels have a schedule in ``kernels``, how many it has), as the
    build looks them up: a tuning run can cover some buckets, or some kernels of a bucket
    (``export.tune --top``), and the others compile with TVM's default schedules."""
    from tvm.s_tir.meta_schedule import relax_integration as ri
    from tvm_ffi import structural_hash

    tasks = ri.extract_tasks(prepare(mod, target), target.tvm_target())
    return sum(structural_hash(t.dispatched[0]) in kernels for t in tasks), len(tasks)


def import_onnx(onnx_path):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=False)


def compile_module(mod, target, db_dir=None):
    """Apply the database (if any) and compile; returns a relax VM executable."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tvm_target = target.tvm_target()
    # The database in scope is the one the pipeline applies; without one it opens work_dir's
    # itself and logs a TVM warning saying so, once per bucket.
    db = ms.database.JSONDatabase(work_dir=str(db_dir)) if db_dir is not None else ms.database.MemoryDatabase()
    with tempfile.TemporaryDirectory() as empty:
        work = str(db_dir) if db_dir is not None else empty
        with tvm_target, db:
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
