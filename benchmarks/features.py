"""Feature-extraction time per bucket, backend by backend, in one run.

    python -m benchmarks.features [--model models/default] [--backends mxnet,onnxruntime,tvm] [--repeat 50]

Every backend runs the same random patch of every bucket ``--repeat`` times after warm-up,
interleaved (each round times every backend on every bucket once), so that a machine whose
speed drifts during the run slows all backends alike; reports the median and p95 ms per
bucket and the ratio to MXNet (features.json / .md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from runtime.model import load_model
from runtime.report import markdown_table

from .common import dump_json, machine


def time_interleaved(backends: dict, model, repeat, warmup=5) -> dict:
    """{backend: {bucket: {median_ms, p95_ms}}}, each round timing every (bucket, backend) once."""
    shapes = [tuple(s) for s in model.policy.shapes]
    xs = [np.random.default_rng(b).uniform(-128, 128, (1, 3) + s).astype(np.float32) for b, s in enumerate(shapes)]
    for be in backends.values():
        for b, x in enumerate(xs):
            for _ in range(warmup):
                be.extract(b, x)
    ms = {(n, b): [] for n in backends for b in range(len(xs))}
    for _ in range(repeat):
        for b, x in enumerate(xs):
            for n, be in backends.items():
                t = time.perf_counter()
                be.extract(b, x)
                ms[(n, b)].append((time.perf_counter() - t) * 1e3)
    return {n: {f"{s[0]}x{s[1]}": {"median_ms": float(np.median(ms[(n, b)])),
                                   "p95_ms": float(np.percentile(ms[(n, b)], 95))}
                for b, s in enumerate(shapes)} for n in backends}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--backends", default="mxnet,onnxruntime,tvm")
    ap.add_argument("--artifacts", default=None, help="prebuilt TVM set (default: the llvm cache)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/features")
    args = ap.parse_args(argv)
    from runtime.backends import make_backend

    model = load_model(args.model)
    names = [b for b in args.backends.split(",") if b]
    res = {"machine": machine(), "command": "python -m benchmarks.features " + " ".join(argv or sys.argv[1:]),
           "backends": {}}
    backends = {}
    for name in names:
        kw = {"artifacts": args.artifacts} if (name == "tvm" and args.artifacts) else {}
        backends[name] = make_backend(name, model, **kw)
        if name == "tvm":
            import json

            m = json.loads((Path(backends[name].folder) / "manifest.json").read_text())
            res["tvm_tuning_db"] = m.get("tuning_db")
    res["backends"] = time_interleaved(backends, model, args.repeat)
    del backends
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
    text = (f"# Feature extraction per bucket\n\nMachine: {res['machine']['cpu']}, {res['machine']['cores']} cores. "
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
