"""MetaSchedule tuning per bucket: ``python -m export.tune --target llvm --trials 64``.

Tunes the extractor of every bucket (or ``--buckets``) and merges the records into the
committed database ``export/tuning/<target>/``, which every later build applies without
tuning. Needs the ``tune`` extra (xgboost, psutil, cloudpickle). GPU targets tune on the
GPU machine itself.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def prepare(mod, target):
    """The passes the build's static_shape_tuning pipeline runs before it looks up the
    database, so that tuned workloads match the ones the build asks for."""
    import tvm
    from tvm import relax

    with target.tvm_target():
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.get_pipeline("zero")])(mod)


def tune_bucket(onnx_path, target, trials_per_task: int, work_dir, build_timeout: float = 300.0) -> int:
    """Tune every task of one bucket; returns the number of tasks."""
    from tvm.s_tir import meta_schedule as ms

    from .tvm_build import import_onnx

    mod = prepare(import_onnx(onnx_path), target)
    tasks = ms.relax_integration.extract_tasks(mod, target.tvm_target())
    # A loaded 2-core machine compiles a candidate in tens of seconds: the default 30 s
    # builder timeout turned every candidate into a "build error".
    ms.relax_integration.tune_relax(
        mod, params={}, target=target.tvm_target(), work_dir=str(work_dir),
        max_trials_global=trials_per_task * len(tasks), max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(64, trials_per_task),
        builder=ms.builder.LocalBuilder(timeout_sec=build_timeout),
        runner=ms.runner.LocalRunner(timeout_sec=60.0), seed=0)
    return len(tasks)


def merge_database(src_dir, dst_dir) -> int:
    """Append ``src_dir``'s records to ``dst_dir`` (JSONDatabase files; workloads dedup'd)."""
    from tvm.s_tir import meta_schedule as ms

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    src = ms.database.JSONDatabase(work_dir=str(src_dir))
    dst = ms.database.JSONDatabase(work_dir=str(dst_dir))
    n = 0
    for rec in src.get_all_tuning_records():
        if rec.run_secs:
            dst.commit_tuning_record(ms.database.TuningRecord(
                rec.trace, dst.commit_workload(rec.workload.mod), rec.run_secs, rec.target, rec.args_info))
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--target", default="llvm", help="llvm, llvm:MCPU or cuda:sm_XX (tune on that hardware)")
    ap.add_argument("--trials", type=int, default=64, help="trials per task (per fused kernel)")
    ap.add_argument("--buckets", default=None, help="comma-separated bucket indices (default: all)")
    ap.add_argument("--db", default=None, help="database folder (default: export/tuning/<target>)")
    args = ap.parse_args(argv)

    from runtime.model import load_model

    from .build import build_onnx
    from .targets import parse
    from .tvm_build import tuning_dir

    model = load_model(args.model)
    target = parse(args.target)
    if target.device == "cpu":
        # MetaSchedule needs the core count; records are looked up by workload, so builds
        # without this attribute still find them.
        import os

        from .targets import CompileTarget

        target = CompileTarget(target.name, {**target.target, "num-cores": os.cpu_count()}, target.device, target.cross)
    if target.cross:
        print("error: cross targets cannot be tuned here; tune on the board and copy the database", file=sys.stderr)
        return 2
    db = Path(args.db) if args.db else tuning_dir(target.name)
    buckets = [int(b) for b in args.buckets.split(",")] if args.buckets else list(range(len(model.policy.shapes)))
    log = {"target": target.name, "trials_per_task": args.trials, "buckets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = build_onnx(model, Path(tmp) / "onnx", log=lambda m: None)
        from runtime.artifacts import bucket_file

        for b in buckets:
            shape = model.policy.shapes[b]
            path = onnx_dir / bucket_file(b, shape, "onnx")
            work = Path(tmp) / f"work{b}"
            t0 = time.time()
            print(f"bucket {b} {shape[0]}x{shape[1]}: {args.trials} trials per task", flush=True)
            n_tasks = tune_bucket(path, target, args.trials, work)
            n = merge_database(work, db)
            minutes = (time.time() - t0) / 60
            log["buckets"][f"{shape[0]}x{shape[1]}"] = {"tasks": n_tasks, "records": n, "minutes": round(minutes, 2)}
            print(f"bucket {b}: {n} records merged into {db} in {minutes:.1f} min", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    history = db / "tuning_log.json"
    old = json.loads(history.read_text()) if history.is_file() else []
    old.append(log)
    history.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
