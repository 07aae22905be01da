"""Feature-extraction time per bucket, backend by backend, in one run.

    python -m benchmarks.features [--model models/default] [--backends mxnet,onnxruntime,tvm] [--repeat 100]

Each backend runs alone in its own process, as in the tracker: measured in one process,
MXNet's oneDNN ran up to 1.4x slower beside the ONNX Runtime and TVM thread pools. The
processes alternate in rounds (one per backend per round, order rotated), each timing
``BLOCK`` calls of every bucket after warm-up, so that a machine whose speed drifts during
the run (this shared 2-core VM's does, by up to 1.5x over an hour) slows all backends alike.
Reports the median and p95 ms per bucket over all rounds and the ratio to MXNet
(features.json / .md). An --out that holds a previous run's results is refused unless
--force, which deletes those files first.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtime.artifacts import peek_manifest
from runtime.errors import TrackerInputError
from runtime.model import load_model
from runtime.report import markdown_table

from .common import check_inputs, command, dump_json, machine, machine_line, names_in, prepare_out, reports_user_errors


BLOCK = 10
REPORT_FILES = ("features.json", "features.md")


def time_alone(name, model_dir, artifacts, calls, warmup=5) -> dict:
    """{bucket: [ms, ...]} of ``calls`` timed calls per bucket of one backend (this process)."""
    from runtime.backends import make_backend

    model = load_model(model_dir)
    kw = {"artifacts": artifacts} if (name == "tvm" and artifacts) else {}
    be = make_backend(name, model, **kw)
    out = {"tvm_tuning_db": None, "ms": {}}
    if name == "tvm":
        out["tvm_tuning_db"] = (peek_manifest(be.folder) or {}).get("tuning_db")
    for b, shape in enumerate(model.policy.shapes):
        x = np.random.default_rng(b).uniform(-128, 128, (1, 3) + tuple(shape)).astype(np.float32)
        for _ in range(warmup):
            be.extract(b, x)
        ms = []
        for _ in range(calls):
            t = time.perf_counter()
            be.extract(b, x)
            ms.append((time.perf_counter() - t) * 1e3)
        out["ms"][f"{shape[0]}x{shape[1]}"] = ms
    return out


def time_rounds(names, model_dir, artifacts, repeat) -> tuple:
    """({backend: {bucket: {median_ms, p95_ms}}}, tuning db) from alternating worker processes."""
    raw = {n: {} for n in names}
    db = None
    rounds = max(1, -(-repeat // BLOCK))
    for r in range(rounds):
        calls = min(BLOCK, repeat - r * BLOCK)
        for n in names[r % len(names):] + names[:r % len(names)]:
            cmd = [sys.executable, "-m", "benchmarks.features", "--worker", n, "--repeat", str(calls)]
            if model_dir:
                cmd += ["--model", str(model_dir)]
            if artifacts:
                cmd += ["--artifacts", str(artifacts)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
            if proc.returncode == 2:  # the worker's one-line user error (e.g. a backend not installed)
                raise TrackerInputError((proc.stderr.strip().splitlines() or [f"{n} worker failed"])[-1].removeprefix("error: "))
            if proc.returncode != 0:
                raise RuntimeError(f"{n} worker failed: {proc.stderr.strip().splitlines()[-1:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            db = got["tvm_tuning_db"] or db
            for bk, ms in got["ms"].items():
                raw[n].setdefault(bk, []).extend(ms)
    stats = {n: {bk: {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95))}
                 for bk, v in raw[n].items()} for n in names}
    return stats, db


@reports_user_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--backends", default="mxnet,onnxruntime,tvm", help="comma-separated: mxnet, onnxruntime, tvm (default all)")
    ap.add_argument("--artifacts", default=None, help="prebuilt TVM set (default: the llvm cache)")
    ap.add_argument("--repeat", type=int, default=100, help="timed calls per bucket and backend (default 100: 10 rounds)")
    ap.add_argument("--out", default="benchmarks/results/features", help="report folder")
    ap.add_argument("--force", action="store_true",
                    help="replace the results of a previous run in --out (deletes only the files this tool writes)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one backend, JSON on stdout
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(time_alone(args.worker, args.model, args.artifacts, args.repeat)))
        return 0

    from runtime.backends import BACKENDS

    names = names_in(args.backends, BACKENDS)
    if args.repeat < 1:
        raise TrackerInputError(f"--repeat must be positive, got {args.repeat}")
    check_inputs([], out_dir=args.out)
    res = {"machine": machine(), "command": command("benchmarks.features", argv),
           "timing": f"each backend alone in its own process; rounds of {BLOCK} calls per bucket, alternating",
           "backends": {}}
    load_model(args.model)  # a bad --model fails here, before any worker starts
    prepare_out(args.out, REPORT_FILES, args.force)
    res["backends"], res["tvm_tuning_db"] = time_rounds(names, args.model, args.artifacts, args.repeat)
    buckets = list(res["backends"][names[0]])
    rows = []
    for bk in buckets:
        ref = res["backends"].get("mxnet", {}).get(bk, {}).get("median_ms")
        row = [bk]
        for n in names:
            v = res["backends"][n][bk]["median_ms"]
            row += [v, v / ref if ref else None]
        rows.append(row)
    headers = ["bucket"] + [h for n in names for h in (f"{n} ms", f"{n} / mxnet")]
    text = (f"# Feature extraction per bucket\n\n{machine_line(res['machine'])} "
            f"TVM tuning database: {res.get('tvm_tuning_db')}.\nCommand: `{res['command']}`\n\n"
            + markdown_table(headers, rows) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.md").write_text(text)
    dump_json(res, out / "features.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
