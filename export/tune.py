"""MetaSchedule tuning per bucket: ``python -m export.tune --target llvm --trials 64``.

Tunes the extractor of every bucket (or ``--buckets``) and merges the records into the
committed database ``export/tuning/<target>/``, which every later build applies without
tuning. Needs the ``tune`` extra (xgboost, psutil, cloudpickle). GPU targets tune on the
GPU machine itself; there ``--onnx-dir`` takes the ONNX set that ``python -m export`` wrote
elsewhere, so that the GPU machine needs TVM and onnx but not MXNet. ``--max-minutes``
bounds a session on borrowed hardware: each bucket's records are merged as soon as it is
done, and no bucket is started that the time left cannot hold.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


def heaviest(tasks, n: int | None):
    """The ``n`` tasks with the most floating-point work (FLOPs x occurrences in the graph),
    heaviest first; all tasks when ``n`` is None. On this CPU the first conv and the 3x3
    expands of the two early fire modules are most of a bucket's time: more trials there
    pay more than the same trials spread over every kernel."""
    if n is None:
        return list(tasks)
    from tvm.s_tir.analysis import estimate_tir_flops

    return sorted(tasks, key=lambda t: -float(estimate_tir_flops(t.dispatched[0])) * t.weight)[:n]


def tune_bucket(onnx_path, target, trials_per_task: int, work_dir, build_timeout: float = 300.0,
                top: int | None = None, seed: int = 0) -> int:
    """Tune every task (or the ``top`` heaviest) of one bucket; returns the number tuned."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import relax_integration as ri

    from .tvm_build import import_onnx, prepare

    mod = prepare(import_onnx(onnx_path), target)
    tasks = heaviest(ri.extract_tasks(mod, target.tvm_target()), top)
    contexts, weights = ri.extracted_tasks_to_tune_contexts(extracted_tasks=tasks, work_dir=str(work_dir), seed=seed)
    # A loaded 2-core machine compiles a candidate in tens of seconds: the default 30 s
    # builder timeout turned every candidate into a "build error".
    ri.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir),
        max_trials_global=trials_per_task * len(tasks), max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(64, trials_per_task),
        builder=ms.builder.LocalBuilder(timeout_sec=build_timeout, f_build=build_candidate),
        runner=ms.runner.LocalRunner(timeout_sec=60.0, evaluator_config=_evaluator(target)))
    return len(tasks)


def build_candidate(mod, target, _params):
    """MetaSchedule's default candidate build without its ``import tvm.s_tir.tensor_intrin``.

    The builder starts fresh worker processes for every batch, and that import (registering
    every tensor intrinsic of every target) costs each of them 16 s here, against under a
    second for building an fp32 candidate: it was nearly all of a tuning session. This
    extractor is fp32 and uses no tensor intrinsics; a trace that needed one would fail to
    build and be reported as a build error, not mis-built."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _evaluator(target):
    """GPU kernels of these shapes run in microseconds: 20 ms of repeats per candidate measure
    them as steadily as MetaSchedule's default 100 ms and leave a short GPU lease more trials."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(min_repeat_ms=20 if target.device == "cuda" else 100)


def merge_database(src_dir, dst_dir) -> int:
    """Append ``src_dir``'s measured records to ``dst_dir`` (JSONDatabase files; workloads
    dedup'd); candidates that failed to build or run are left out. Returns how many."""
    from tvm.s_tir import meta_schedule as ms

    from .tvm_build import copy_records

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    return copy_records(src_dir, ms.database.JSONDatabase(work_dir=str(dst_dir)))


def onnx_buckets(onnx_dir) -> dict:
    """{bucket index: (shape, path)} of an ONNX artifact set, read from the manifest that
    ``python -m export`` wrote beside the files, each file checked against its sha256."""
    from runtime.artifacts import MANIFEST, bucket_file, check_files, peek_manifest, read_manifest

    folder = Path(onnx_dir)
    fix = "write one with python -m export --model MODEL --targets onnx --out OUT, then pass --onnx-dir OUT/onnx"
    m = peek_manifest(folder) if folder.is_dir() else None
    if m is None and (folder / "onnx" / MANIFEST).is_file():
        raise ValueError(f"--onnx-dir {folder} is export's output folder; pass its ONNX set, --onnx-dir {folder / 'onnx'}")
    if isinstance(m, dict) and m.get("kind") not in (None, "onnx"):
        raise ValueError(f"--onnx-dir {folder} holds {m.get('kind')} artifacts, not an ONNX set; pass the onnx "
                         f"folder export wrote beside it ({folder.parent / 'onnx'}), or {fix}")
    manifest = read_manifest(folder, "onnx", fix)
    check_files(folder, manifest, fix)
    found = {}
    for i, shape in enumerate(manifest.get("buckets", [])):
        name = bucket_file(i, shape, "onnx")
        if name not in manifest.get("files", {}):
            raise ValueError(f"{folder / name} is missing from the ONNX set its manifest describes; {fix}")
        found[i] = ((int(shape[0]), int(shape[1])), folder / name)
    if not found:
        raise ValueError(f"the manifest of {folder} lists no buckets; {fix}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--target", default="llvm", help="llvm, llvm:MCPU or cuda:sm_XX (tune on that hardware)")
    ap.add_argument("--trials", type=int, default=64, help="trials per task (per fused kernel)")
    ap.add_argument("--buckets", default=None, help="comma-separated bucket indices (default: all)")
    ap.add_argument("--db", default=None, help="database folder (default: the committed export/tuning/<target>); "
                                               "build with one of your own by python -m export --tuning-db DIR")
    ap.add_argument("--onnx-dir", default=None,
                    help="tune this ONNX set (python -m export's onnx/ folder) instead of exporting the model")
    ap.add_argument("--top", type=int, default=None,
                    help="tune only the N tasks with the most FLOPs of each bucket (default: every task)")
    ap.add_argument("--seed", type=int, default=0,
                    help="search seed: a later session with another seed explores other candidates")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no bucket that would end after this many minutes (estimated from the last one)")
    args = ap.parse_args(argv)
    for flag, value, ok in (("--trials", args.trials, args.trials >= 1),
                            ("--top", args.top, args.top is None or args.top >= 1),
                            ("--max-minutes", args.max_minutes, args.max_minutes is None or args.max_minutes > 0)):
        if not ok:
            print(f"error: {flag} must be positive, got {value}", file=sys.stderr)
            return 2

    from . import TUNE_PACKAGES, missing_packages

    missing = missing_packages(TUNE_PACKAGES, "tune")
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    from runtime.errors import TrackerInputError
    from runtime.model import load_model
    from runtime.outputs import check_output_folder

    from .targets import parse
    from .tvm_build import check_user_db, tuning_dir

    try:
        target = parse(args.target)
        given = onnx_buckets(Path(args.onnx_dir).expanduser()) if args.onnx_dir else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        wanted = [int(b) for b in args.buckets.split(",")] if args.buckets else None
    except ValueError:
        print(f"error: --buckets takes indices like 0,3, got {args.buckets!r}", file=sys.stderr)
        return 2
    if target.device == "cpu":
        # MetaSchedule needs the core count; records are looked up by workload, so builds
        # without this attribute still find them.
        from .targets import CompileTarget

        target = CompileTarget(target.name, {**target.target, "num-cores": os.cpu_count()}, target.device, target.cross)
    if target.cross:
        print(f"error: cross targets cannot be tuned here; tune on the board (--target llvm, or cuda:sm_XX on a "
              f"Jetson) with --db DIR, then build here with: python -m export --targets {args.target} --tuning-db DIR "
              "--out OUT", file=sys.stderr)
        return 2
    if target.device == "cuda" and _gpu_name() is None:
        # without a GPU every candidate fails to run: a "tuned" database of failures
        print(f"error: tuning {args.target} measures candidates on the GPU, and this machine has none (nvidia-smi "
              "finds no GPU); tune on the GPU machine, from an ONNX set exported here (--onnx-dir)", file=sys.stderr)
        return 2
    db = Path(args.db).expanduser() if args.db else tuning_dir(target.name)
    try:
        if args.db and not db.is_file():  # a file: check_output_folder below says so
            check_user_db(db, target, "--db", must_hold_one=False)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    history = db / "tuning_log.json"
    try:
        # everything that could stop the run after a bucket's tuning is checked before it
        model = load_model(args.model) if given is None else None
        check_output_folder(db, "--db")
        db.mkdir(parents=True, exist_ok=True)
        entries = json.loads(history.read_text()) if history.is_file() else []
        if not isinstance(entries, list):
            raise ValueError("not a list of runs")
    except TrackerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: --db {db}: {e.strerror or e}; give a writable folder", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {history} is not a tuning log ({e}); fix it or move it away", file=sys.stderr)
        return 2
    log = {"target": target.name, "trials_per_task": args.trials, "buckets": {}}
    if args.top is not None:
        log["top_tasks"] = args.top
    if args.seed:
        log["seed"] = args.seed
    if target.device == "cuda":
        log["device"] = _gpu_name()
    else:  # another CPU's records are a guess here: say whose they are
        log["cpu"] = target.resolved().get("mcpu")
    entries.append(log)

    def save_log():
        # after every bucket, so a run stopped by a time limit keeps the line for what it merged
        db.mkdir(parents=True, exist_ok=True)
        history.write_text(json.dumps(entries, indent=1) + "\n")

    from runtime.stopping import StopRequest, stopped_by

    stop = StopRequest()  # a signal stops at once; the buckets merged so far stay merged
    old = stop.install()  # None off the main thread: signals stay as they are
    try:
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            if given is None:
                from runtime.artifacts import bucket_file

                from .build import build_onnx

                onnx_dir = build_onnx(model, Path(tmp) / "onnx", log=lambda m: None)
                given = {b: (tuple(s), onnx_dir / bucket_file(b, s, "onnx")) for b, s in enumerate(model.policy.shapes)}
            buckets = wanted if wanted is not None else sorted(given)
            missing = [b for b in buckets if b not in given]
            if missing:
                print(f"error: no bucket {missing[0]} (buckets: {', '.join(map(str, sorted(given)))})", file=sys.stderr)
                return 2
            last = 0.0
            for b in buckets:
                shape, path = given[b]
                spent = (time.time() - start) / 60
                if args.max_minutes is not None and spent + last > args.max_minutes:
                    print(f"bucket {b} {shape[0]}x{shape[1]}: not tuned ({spent:.1f} of {args.max_minutes} min spent, "
                          f"the last bucket took {last:.1f})", flush=True)
                    log["buckets"][f"{shape[0]}x{shape[1]}"] = {"skipped": "time budget"}
                    save_log()
                    continue
                work = Path(tmp) / f"work{b}"
                t0 = time.time()
                print(f"bucket {b} {shape[0]}x{shape[1]}: {args.trials} trials per task", flush=True)
                n_tasks = tune_bucket(path, target, args.trials, work, top=args.top, seed=args.seed)
                n = merge_database(work, db)
                last = (time.time() - t0) / 60
                log["buckets"][f"{shape[0]}x{shape[1]}"] = {"tasks": n_tasks, "records": n, "minutes": round(last, 2)}
                save_log()
                print(f"bucket {b}: {n} records merged into {db} in {last:.1f} min", flush=True)
                shutil.rmtree(work, ignore_errors=True)
        return 0
    except (KeyboardInterrupt, Exception) as e:
        name = stopped_by(e, stop)  # a signal inside MetaSchedule comes back as another error
        if name is None:
            raise
        done = ", ".join(s for s, r in log["buckets"].items() if r.get("records")) or "none"
        print(f"interrupted ({name}); buckets merged into {db} so far: {done}", file=sys.stderr)
        _quiet_pool_teardown()
        return 128 + getattr(signal, name)
    finally:
        StopRequest.restore(old)


def _quiet_pool_teardown() -> None:
    """After a stop mid-search, MetaSchedule's worker pool is collected from one of its own
    threads, whose join of itself prints an "Exception ignored" traceback at exit (the workers
    are gone by then). Only that one is dropped."""
    previous = sys.unraisablehook

    def hook(u):
        if not (isinstance(u.exc_value, RuntimeError) and "cannot join current thread" in str(u.exc_value)
                and type(u.object).__name__ == "function" and "PopenPoolExecutor" in repr(u.object)):
            previous(u)

    sys.unraisablehook = hook


def _gpu_name():
    """The GPU's name as the CUDA driver gives it (None without one)."""
    try:
        import subprocess

        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return (r.stdout.strip() or None) if r.returncode == 0 else None  # no driver: its error is on stdout
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
