"""One-pass evaluation (OTB convention) and per-frame cost statistics.

The rules (the OTB toolkit's, as the GOT-10k toolkit computes them):

* **Success**: per-frame IoU between the prediction and the ground truth; the success
  curve is the share of evaluated frames whose IoU is *strictly greater* than each
  threshold in ``SUCCESS_THRESHOLDS`` (``linspace(0, 1, 21)``, the OTB rule), and the AUC
  is the mean of that curve.
* **Precision**: the share of evaluated frames whose centre error is ``<=`` a threshold in
  pixels; ``precision`` is the value at ``PRECISION_AT`` = 20 px (exactly 20 px counts).
* **Skipped frames (target absent)**: a frame whose ground truth has any non-finite
  coordinate (NaN, the usual "absent" marker, or inf) or a non-positive width or height is
  not evaluated at all: it counts in ``n_frames`` but not in ``n_evaluated``, and is in no
  numerator or denominator.
* **Failed predictions**: a predicted box with a non-finite coordinate (the tracker lost
  the target / produced nothing) is *not* skipped: it scores IoU 0 and an infinite centre
  error, so it fails at every threshold. A predicted box with a non-positive size scores
  IoU 0 and its centre error is measured as usual.
* Per-sequence scores are averaged per sequence (each sequence weighs the same), the OTB
  convention, by :func:`mean_scores`.

Costs: :func:`cost_stats` reports the first frame (initialisation, which includes the
first-frame fine-tuning and any warm-up) separately from the median / p95 / max / mean of
the other frames; :func:`stage_stats` does the same per stage. Percentiles are numpy's
default (linear interpolation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import TrackerInputError
from .geometry import center_error, iou

__all__ = [
    "SUCCESS_THRESHOLDS",
    "PRECISION_THRESHOLDS",
    "PRECISION_AT",
    "SequenceScore",
    "evaluate_sequence",
    "mean_scores",
    "cost_stats",
    "stage_stats",
]

#: IoU thresholds of the success plot; success at t = share of frames with IoU > t.
SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)
#: Centre-error thresholds (pixels) of the precision plot; share of frames with error <= t.
PRECISION_THRESHOLDS = np.arange(0, 51)
#: The single precision figure is the precision-curve value at this many pixels.
PRECISION_AT = 20


def _float_or_none(x) -> float | None:
    """A plain float for JSON; NaN / inf become ``None``."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class SequenceScore:
    """One-pass scores of one tracker on one sequence.

    ``auc``, ``precision`` and ``mean_iou`` are NaN, and the curves all-NaN, when no frame
    could be evaluated (``n_evaluated == 0``); :meth:`to_dict` writes those as ``None``.
    """

    n_frames: int
    n_evaluated: int
    auc: float
    precision: float
    mean_iou: float
    success_curve: tuple  # len(SUCCESS_THRESHOLDS) floats
    precision_curve: tuple  # len(PRECISION_THRESHOLDS) floats

    def to_dict(self) -> dict:
        """Plain JSON-able values (ints, floats, lists; NaN becomes ``None``)."""
        return {
            "n_frames": int(self.n_frames),
            "n_evaluated": int(self.n_evaluated),
            "auc": _float_or_none(self.auc),
            "precision": _float_or_none(self.precision),
            "mean_iou": _float_or_none(self.mean_iou),
            "success_curve": [_float_or_none(v) for v in self.success_curve],
            "precision_curve": [_float_or_none(v) for v in self.precision_curve],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "SequenceScore":
        """Inverse of :meth:`to_dict` (``None`` becomes NaN)."""

        def f(v):
            return float("nan") if v is None else float(v)

        try:
            s = cls(
                n_frames=int(d["n_frames"]),
                n_evaluated=int(d["n_evaluated"]),
                auc=f(d["auc"]),
                precision=f(d["precision"]),
                mean_iou=f(d["mean_iou"]),
                success_curve=tuple(f(v) for v in d["success_curve"]),
                precision_curve=tuple(f(v) for v in d["precision_curve"]),
            )
        except KeyError as e:
            raise TrackerInputError(f"a sequence score lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise TrackerInputError(f"a sequence score has a value that is not a number ({e})") from None
        # a curve of another length would be averaged into nonsense (numpy joins ragged tuples)
        if len(s.success_curve) != len(SUCCESS_THRESHOLDS) or len(s.precision_curve) != len(PRECISION_THRESHOLDS):
            raise TrackerInputError(f"a sequence score's curves have {len(s.success_curve)} / {len(s.precision_curve)} "
                                    f"points, not {len(SUCCESS_THRESHOLDS)} / {len(PRECISION_THRESHOLDS)}")
        if not 0 <= s.n_evaluated <= s.n_frames:
            raise TrackerInputError(f"a sequence score evaluates {s.n_evaluated} of {s.n_frames} frames")
        return s


def _as_track(boxes, name: str) -> np.ndarray:
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise TrackerInputError(f"{name} must be N rows of 4 numbers x, y, w, h (NaN for a lost frame)") from None
    if b.ndim == 1 and b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise TrackerInputError(f"{name} must have shape (N, 4) of x, y, w, h boxes, got {b.shape}")
    return b


def evaluate_sequence(pred, gt) -> SequenceScore:
    """Score predicted boxes ``pred`` against ground truth ``gt`` (both ``(N, 4)`` x,y,w,h).

    See the module docstring for the rules (absent ground truth skipped, a non-finite
    prediction is a failure). Raises :class:`TrackerInputError` when the shapes differ.
    """
    pred = _as_track(pred, "pred")
    gt = _as_track(gt, "gt")
    if len(pred) != len(gt):
        raise TrackerInputError(f"pred has {len(pred)} frames but gt has {len(gt)}")
    n_frames = len(gt)

    valid = np.all(np.isfinite(gt), axis=1) & (gt[:, 2] > 0) & (gt[:, 3] > 0)
    p, g = pred[valid], gt[valid]
    n_eval = len(g)
    if n_eval == 0:
        nan = float("nan")
        return SequenceScore(
            n_frames=n_frames,
            n_evaluated=0,
            auc=nan,
            precision=nan,
            mean_iou=nan,
            success_curve=(nan,) * len(SUCCESS_THRESHOLDS),
            precision_curve=(nan,) * len(PRECISION_THRESHOLDS),
        )

    p_ok = np.all(np.isfinite(p), axis=1)
    ious = np.zeros(n_eval)
    errs = np.full(n_eval, np.inf)
    if p_ok.any():
        ious[p_ok] = iou(p[p_ok], g[p_ok])  # finite boxes: finite, and clipped to [0, 1] there
        errs[p_ok] = center_error(p[p_ok], g[p_ok])

    success = (ious[None, :] > SUCCESS_THRESHOLDS[:, None]).mean(axis=1)
    precision_curve = (errs[None, :] <= PRECISION_THRESHOLDS[:, None]).mean(axis=1)
    return SequenceScore(
        n_frames=n_frames,
        n_evaluated=n_eval,
        auc=float(success.mean()),
        precision=float((errs <= PRECISION_AT).mean()),
        mean_iou=float(ious.mean()),
        success_curve=tuple(float(v) for v in success),
        precision_curve=tuple(float(v) for v in precision_curve),
    )


def _coerce_score(s) -> SequenceScore:
    return s if isinstance(s, SequenceScore) else SequenceScore.from_dict(s)


def mean_scores(scores: Iterable) -> dict:
    """Average per-sequence scores (each sequence weighs the same, the OTB convention).

    ``scores`` holds :class:`SequenceScore` objects or their ``to_dict()`` form. Sequences
    with no evaluated frame are left out of the average (counted in ``n_skipped``); when no
    sequence is left the metrics are ``None``. Returns plain JSON-able values:
    ``n_sequences`` (averaged), ``n_skipped``, ``auc``, ``precision``, ``mean_iou``,
    ``success_curve``, ``precision_curve``.
    """
    scores = [_coerce_score(s) for s in scores]
    used = [s for s in scores if s.n_evaluated > 0]
    out = {"n_sequences": len(used), "n_skipped": len(scores) - len(used)}
    if not used:
        out.update(auc=None, precision=None, mean_iou=None,
                   success_curve=None, precision_curve=None)
        return out
    out["auc"] = float(np.mean([s.auc for s in used]))
    out["precision"] = float(np.mean([s.precision for s in used]))
    out["mean_iou"] = float(np.mean([s.mean_iou for s in used]))
    out["success_curve"] = [float(v) for v in np.mean([s.success_curve for s in used], axis=0)]
    out["precision_curve"] = [
        float(v) for v in np.mean([s.precision_curve for s in used], axis=0)
    ]
    return out


def _times(values, name: str) -> np.ndarray:
    if isinstance(values, Mapping) or values is None:
        raise TrackerInputError(f"{name}: expected a list of per-frame ms, got {type(values).__name__}")
    try:
        t = np.asarray(list(values), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TrackerInputError(f"{name}: frame times must be numbers (ms)") from None
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if len(bad):
        raise TrackerInputError(f"{name}: frame {bad[0]} takes {t[bad[0]]} ms; frame times must be finite and >= 0")
    return t


def _summary(t: np.ndarray) -> dict:
    """first / median / p95 / max / mean ms of a per-frame series (rest = frames >= 1)."""
    rest = t[1:]
    out = {
        "first_ms": float(t[0]) if len(t) else None,
        "median_ms": None,
        "p95_ms": None,
        "max_ms": None,
        "mean_ms": None,
    }
    if len(rest):
        out.update(
            median_ms=float(np.median(rest)),
            p95_ms=float(np.percentile(rest, 95)),
            max_ms=float(rest.max()),
            mean_ms=float(rest.mean()),
        )
    return out


def cost_stats(frame_ms: Sequence[float]) -> dict:
    """Per-frame cost summary: the init frame apart from the steady state.

    Returns ``n_frames``, ``first_ms`` (frame 0, the initialisation frame), and
    ``median_ms`` / ``p95_ms`` / ``max_ms`` / ``mean_ms`` over frames 1.., plus ``fps`` =
    1000 / ``mean_ms``. With one frame the steady-state values are ``None``; with none,
    ``first_ms`` is ``None`` too. ``fps`` is ``None`` when the mean is 0.
    """
    t = _times(frame_ms, "frame_ms")
    out = {"n_frames": int(len(t))}
    out.update(_summary(t))
    mean = out["mean_ms"]
    out["fps"] = 1000.0 / mean if mean else None
    return out


def stage_stats(stage_ms: Mapping[str, Sequence[float]]) -> dict:
    """Per-stage cost: ``{stage: {n_frames, first_ms, median_ms, p95_ms, max_ms, mean_ms}}``.

    Each stage's list holds one time per frame (frame 0 first); the summary statistics are
    over frames after the first, as in :func:`cost_stats`.
    """
    if not isinstance(stage_ms, Mapping):
        raise TrackerInputError(f"stage_ms: expected {{stage: [ms per frame]}}, got {type(stage_ms).__name__}")
    out = {}
    for stage, values in stage_ms.items():
        t = _times(values, f"stage {stage!r}")
        out[stage] = {"n_frames": int(len(t))}
        out[stage].update(_summary(t))
    return out
