"""Run the tracker through the GOT-10k toolkit's experiments and print its report.

    pip install -e '.[toolkits]'
    python examples/got10k_eval.py --dataset otb --root data/OTB --version 2015
    python examples/got10k_eval.py --dataset got10k --root data/GOT-10k --subset val

``--dataset otb`` expects ``ROOT/<Sequence>/img/0001.jpg`` and ``groundtruth_rect.txt`` for
every sequence of the version (the toolkit downloads missing ones, so this script refuses
to start when any is missing unless ``--allow-download``); ``--dataset got10k`` expects
``ROOT/<subset>/list.txt`` and the sequence folders the toolkit documents. Results go to
``--results`` (one ``<seq>.txt`` per sequence, existing ones are kept and skipped), the
report and plots to ``--reports``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Run from anywhere inside a checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.backends import BACKENDS  # noqa: E402
from runtime.errors import TrackerInputError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Evaluate the tracker with the GOT-10k toolkit (got10k package).")
    ap.add_argument("--dataset", choices=("otb", "got10k"), default="otb", help="experiment to run (default otb)")
    ap.add_argument("--root", required=True, help="dataset root folder")
    ap.add_argument("--version", default="2015",
                    help="OTB version: 2013, 2015, tb50, tb100, otb2013 or otb2015 (default 2015)")
    ap.add_argument("--subset", default="val", choices=("val", "test"), help="GOT-10k subset (default val)")
    ap.add_argument("--allow-download", action="store_true",
                    help="let the toolkit download OTB sequences missing under --root")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--backend", default="mxnet", choices=BACKENDS, help="feature backend")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--name", default="mdtrack", help="tracker name in results and reports")
    ap.add_argument("--results", default="results", help="results folder (default ./results)")
    ap.add_argument("--reports", default="reports", help="reports folder (default ./reports)")
    return ap


def otb_version(text: str):
    return int(text) if text.isdigit() else text


def missing_otb_sequences(root, version) -> list:
    """Sequence folders of ``version`` that are missing under ``root`` (the toolkit would download them)."""
    from got10k.datasets import OTB

    names = getattr(OTB, "_OTB__version_dict", {}).get(version)
    if names is None:
        raise TrackerInputError(f"unknown OTB version {version!r}; use 2013, 2015, tb50, tb100, otb2013 or otb2015")
    return [s for s in names if not os.path.isdir(os.path.join(root, s))]


def make_experiment(args):
    if args.dataset == "otb":
        from got10k.experiments import ExperimentOTB

        version = otb_version(args.version)
        missing = missing_otb_sequences(args.root, version)
        if missing and not args.allow_download:
            raise TrackerInputError(f"{len(missing)} OTB{version} sequence folder(s) missing under {args.root} "
                             f"(first: {', '.join(missing[:5])}); the toolkit would download them: pass "
                             "--allow-download, or create the folders (empty ones without groundtruth are skipped)")
        return ExperimentOTB(args.root, version=version, result_dir=args.results, report_dir=args.reports)
    from got10k.experiments import ExperimentGOT10k

    listing = os.path.join(args.root, args.subset, "list.txt")
    if not os.path.isfile(listing):
        raise TrackerInputError(f"{listing} not found: --root must hold GOT-10k's {args.subset}/ folder "
                                "with its list.txt")
    return ExperimentGOT10k(args.root, subset=args.subset, result_dir=args.results, report_dir=args.reports)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.outputs import check_output_folder

    try:
        import matplotlib

        matplotlib.use("Agg")  # the report saves plots; no display needed
        from runtime.integrations.got10k import GOT10kTracker
    except ImportError as e:  # without the toolkits extra: the message says what to install
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        check_output_folder(args.results, "--results")  # before the evaluation, not after it
        check_output_folder(args.reports, "--reports")
        tracker = GOT10kTracker(model=args.model, backend=args.backend, device=args.device, seed=args.seed,
                                name=args.name)
        experiment = make_experiment(args)
    except TrackerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    experiment.run(tracker)
    performance = experiment.report([tracker.name])
    if performance is not None:  # GOT-10k test: the report is a submission archive
        overall = performance[tracker.name]["overall"]
        keys = [k for k in ("success_score", "precision_score", "success_rate", "ao", "sr", "speed_fps") if k in overall]
        print(json.dumps({k: round(float(overall[k]), 4) for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
