"""Feature statistics of a trained model: ``python -m train_mx.feature_stats --model DIR``.

Stores the second moment of the extractor's features, measured on the model's own
training sequences (``config.json`` names them), in the model folder. The online head
uses it to factor fc4 into a 1x1 channel projection and a smaller fc4 whose error is
smallest on the features the model actually sees (data-driven low-rank approximation, as
in He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural Networks"): RoIAlign
and fc4 then run on ``fc4_rank`` channels instead of all of them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from runtime.errors import TrackerInputError
from runtime.model import FEATURE_COV, Model, load_model, save_model
from runtime.model import SHARED_SEQUENCES as SEQUENCES


def feature_moment(model: Model, domains, every: int = 10) -> tuple:
    """(C, C) mean of f f^T over every feature-map cell of target-centred patches, one
    frame in ``every`` of each domain; returns (moment, number of cells)."""
    from runtime.backends import make_backend
    from runtime.buckets import extractor_input
    from runtime.errors import SequenceError
    from runtime.sources import read_image

    from .data import warn

    backend = make_backend("mxnet", model)
    policy = model.policy
    acc = np.zeros((model.channels, model.channels))
    cells = 0
    for d in domains:
        for path, box in list(zip(d.frames, d.boxes))[::every]:
            geom = policy.select(box)
            try:
                image = read_image(path)
            except SequenceError as e:  # a corrupt frame: one less sample, not a failed run
                warn(f"{d.name}: frame left out of the statistics: {e}")
                continue
            x = extractor_input(image, geom, model.mean)
            f = backend.extract(geom.bucket, x)[0].reshape(model.channels, -1).astype(np.float64)
            acc += f @ f.T
            cells += f.shape[1]
    if not cells:
        raise TrackerInputError("no usable frames to measure feature statistics on")
    return acc / cells, cells


def training_folder(training: dict):
    """The folder train_mx.train ran in, from the --out it was given and that folder's
    absolute path (both recorded), or None where they do not tell it."""
    out, out_abs = training.get("out"), training.get("out_abs")
    if not (isinstance(out, str) and isinstance(out_abs, str)) or Path(out).expanduser().is_absolute():
        return None
    base = Path(out_abs)
    for _ in Path(out).parts:
        base = base.parent
    if os.path.normpath(base / out) != os.path.normpath(out_abs):  # "..", a symlink resolved: no telling
        return None
    return base


def recorded_sequences(model_dir, training: dict) -> list:
    """The --sequences folders a model was trained on, as paths that hold wherever this runs.
    Models trained before they were recorded absolute hold them as typed: relative to the
    folder training ran in, which --out and its recorded absolute path give."""
    folders = training.get("sequences") or []
    base = None
    out = []
    for f in folders:
        p = Path(f).expanduser()
        if not p.is_absolute():
            base = base or training_folder(training)
            if base is None:
                raise TrackerInputError(f"{model_dir}: config.json records the training sequence {f} relative to a "
                                        "folder it does not name; pass --sequences with the model's training folders")
            p = base / p
        out.append(p)
    return out


def check_sequences(sequences) -> None:
    """Open (and close) each sequence as train_mx.train does, so that every name it trains on
    (OTB's Jogging.1, a target of one folder) is found; the first that cannot be opened is
    refused with the runtime's reason (and its advice where it names the targets to give; the
    tracker's, such as --init, does not apply here)."""
    from runtime.errors import SequenceError
    from runtime.sources import open_sequence_folder

    for s in sequences:
        try:
            open_sequence_folder(s).close()
        except SequenceError as e:
            kept = f"{e.advice}, or " if e.names_targets else ""
            raise SequenceError(e.problem, f"{kept}pass --sequences with the model's training folders") from None


def add_feature_stats(model_dir, sequences=None, every: int = 10) -> Path:
    """Measure the statistics and rewrite the model folder with them (new manifest)."""
    from runtime.sources import without_files

    from .data import load_domains, warn

    model = load_model(model_dir)
    training = model.config.get("training", {})
    names = training.get("domains")
    if sequences is not None:
        sequences, files = without_files(sequences)
        for f in files:
            warn(f"skipping {f}: a file, not a sequence folder")
    if sequences is None:
        if not names:
            raise TrackerInputError(f"{model_dir}: config.json names no training sequences; pass --sequences")
        # the folders given to train_mx.train (--sequences), else ../shared's of those names
        given = {p.name: p for p in recorded_sequences(model_dir, training)}
        sequences = [given.get(n, SEQUENCES / n) for n in names]
    check_sequences(sequences)
    cov, cells = feature_moment(model, load_domains(sequences), every)
    params = dict(model.params)
    params[FEATURE_COV] = cov.astype(np.float32)
    config = dict(model.config)
    config["feature_stats"] = {"sequences": [Path(s).name for s in sequences], "every": every, "cells": cells}
    return save_model(model_dir, config, params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train_mx.feature_stats", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder to add the statistics to (rewritten in place)")
    ap.add_argument("--sequences", nargs="+", default=None,
                    help="sequence folders (default: the model's training sequences, from its config.json)")
    ap.add_argument("--every", type=int, default=10, help="use one frame in this many")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error(f"--every must be at least 1, got {args.every}")
    try:
        path = add_feature_stats(args.model, args.sequences, args.every)
    except (TrackerInputError, OSError) as e:  # ModelError and SequenceError are TrackerInputErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"feature statistics written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
