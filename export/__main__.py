"""``python -m export --model models/default --targets llvm,cuda:sm_87@aarch64,aarch64 [--out DIR]``

Exports the conv extractor of every bucket to ONNX (checked against MXNet), then compiles
one TVM library per (bucket, target), each set with a manifest.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from runtime.errors import TrackerInputError

from .targets import JETSON_ARCHS, DATACENTER_ARCHS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0].strip("`"),
                                 epilog=f"CUDA architectures: Jetson {', '.join(JETSON_ARCHS)}; "
                                        f"datacenter {', '.join(DATACENTER_ARCHS)}. "
                                        "Cross targets (aarch64, cuda:sm_XX@aarch64) need g++-aarch64-linux-gnu.")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--targets", default="llvm",
                    help="comma-separated: llvm, llvm:MCPU, aarch64, cuda:sm_XX, cuda:sm_XX@aarch64 (default llvm); "
                         "the ONNX set is always built, and onnx alone builds only it")
    ap.add_argument("--out", default=None, help="output folder (default: the runtime's artifact cache)")
    ap.add_argument("--tuning-db", default=None,
                    help="a MetaSchedule database of your own (python -m export.tune --db DIR, tuned on the target "
                         "machine), layered over the committed one: its records win for the kernels it measured; "
                         "one TVM target, with --out")
    args = ap.parse_args(argv)
    from . import EXPORT_PACKAGES, TVM_PACKAGES, missing_packages, targets

    try:
        names = targets.parse_list(args.targets)
        for t in names:
            targets.check_toolchain(t)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = missing_packages({**EXPORT_PACKAGES, **(TVM_PACKAGES if names else {})})
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    from runtime.model import load_model
    from runtime.outputs import check_output_folder

    from .build import build
    from .onnx_export import ParityError

    out = Path(args.out).expanduser() if args.out is not None else None
    try:
        model = load_model(args.model)
        if out is not None:
            check_output_folder(out, "--out")
    except (TrackerInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Past this point a ValueError is a bug in the export path: it keeps its traceback.
    from runtime.stopping import StopRequest, stopped_by

    stop = StopRequest()  # not deferred: a signal stops at once, and the staged set is removed
    old = stop.install()  # None off the main thread: signals stay as they are
    done = {}  # the sets swapped in so far

    def kept() -> str:
        """What a stop part-way leaves: the sets already rebuilt, the others as they were."""
        rest = "the previous artifact set, if any, is unchanged" if not done else \
            "the other sets, if any, are as they were"
        new = "".join(f"{n} was rebuilt ({f}); " for n, f in done.items())
        return f"{new}{rest}"

    try:
        build(model, names, out, done=done, tuning=args.tuning_db)
    except (KeyboardInterrupt, Exception) as e:
        name = stopped_by(e, stop)  # first: a signal inside TVM's compiler comes back as another error
        if name is not None:
            print(f"interrupted ({name}); {kept()}", file=sys.stderr)
            return 128 + getattr(signal, name)
        if isinstance(e, TrackerInputError):  # a folder export must not replace (checked before any work)
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ParityError):
            print(f"error: {e}; {kept()}", file=sys.stderr)
            return 1
        if isinstance(e, OSError):
            print(f"error: {e.filename or args.out}: {e.strerror or e}; {kept()}", file=sys.stderr)
            return 1
        raise
    finally:
        StopRequest.restore(old)
    for name, folder in done.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
