"""Evaluation report writer: JSON with every number, a markdown table and OTB-style plots.

matplotlib is imported lazily inside the plotting functions, and figures are drawn on an
explicit Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so importing this
module is cheap, nothing needs a display, and the caller's global pyplot backend and figure
list are never touched (no figure is registered with pyplot, so none is left open).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Mapping, Sequence

from .evaluation import (
    PRECISION_AT,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    SequenceScore,
    mean_scores,
)

__all__ = [
    "write_report",
    "markdown_table",
    "plot_success",
    "plot_precision",
    "plot_frame_costs",
    "plot_scores",
]

_MISSING = "-"


# --------------------------------------------------------------------------- markdown

def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _fmt(v) -> str:
    if v is None:
        return _MISSING
    if _is_number(v):
        if isinstance(v, numbers.Integral):
            return str(int(v))
        v = float(v)
        if math.isnan(v):
            return _MISSING
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.3f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table.

    Numbers are right-aligned (floats with 3 decimals, ints as they are); a column whose
    cells are all numbers or missing (``None`` / NaN, shown as ``-``) is right-aligned,
    any other column left-aligned. Every row must have ``len(headers)`` cells.
    """
    headers = [str(h) for h in headers]
    n = len(headers)
    for i, r in enumerate(rows):
        if len(r) != n:
            raise ValueError(f"row {i} has {len(r)} cells, expected {n}")
    numeric = [
        all(_is_number(r[j]) or r[j] is None for r in rows) and len(rows) > 0
        for j in range(n)
    ]
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [
        max([len(_fmt(headers[j]))] + [len(c[j]) for c in cells] + [3]) for j in range(n)
    ]

    def line(values):
        out = []
        for j, v in enumerate(values):
            out.append(v.rjust(widths[j]) if numeric[j] else v.ljust(widths[j]))
        return "| " + " | ".join(out) + " |"

    sep = "| " + " | ".join(
        ("-" * (widths[j] - 1) + ":") if numeric[j] else (":" + "-" * (widths[j] - 1))
        for j in range(n)
    ) + " |"
    return "\n".join([line([_fmt(h) for h in headers]), sep] + [line(c) for c in cells]) + "\n"


# --------------------------------------------------------------------------- plotting

# matplotlib's warnings about a config or cache folder it cannot write (a read-only home),
# as their format strings: it then keeps both in a temporary folder and the plots are the same.
_FOLDER_WARNINGS = ("mkdir -p failed for path %s: %s", "%s is not a writable directory",
                    "Could not save font_manager cache %s")


def _not_about_folders(record) -> bool:
    return not (record.msg in _FOLDER_WARNINGS or str(record.msg).startswith("Matplotlib created a temporary"))


def _import_matplotlib() -> None:
    """Import matplotlib without its warnings about a home folder it cannot write, so a
    tracker's log in a read-only container gets no lines per run about it; a broken
    matplotlibrc is still reported."""
    import logging

    loggers = [logging.getLogger(n) for n in ("matplotlib", "matplotlib.font_manager")]
    for lg in loggers:
        lg.addFilter(_not_about_folders)
    try:
        import matplotlib.figure  # noqa: F401  (imports the font manager, which warns too)
    finally:
        for lg in loggers:
            lg.removeFilter(_not_about_folders)


def _figure(figsize=(6.0, 4.5)):
    """A new Agg-backed figure and axes, without touching pyplot's global state."""
    _import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _integer_xaxis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    fig.clear()
    return path


def plot_success(curves: Mapping[str, Sequence[float]], path, title: str = "Success plot of OPE"):
    """OTB success plot: one curve per tracker, legend ``name [AUC]`` sorted best first.

    ``curves`` maps a tracker name to its (mean) success curve over ``SUCCESS_THRESHOLDS``.
    """
    items = [(name, [float(v) for v in c]) for name, c in curves.items() if c is not None]
    items.sort(key=lambda kv: -sum(kv[1]) / len(kv[1]))
    fig, ax = _figure()
    for name, c in items:
        ax.plot(SUCCESS_THRESHOLDS, c, linewidth=2, label=f"{name} [{sum(c) / len(c):.3f}]")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Overlap threshold")
    ax.set_ylabel("Success rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    if items:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_precision(curves: Mapping[str, Sequence[float]], path,
                   title: str = "Precision plot of OPE"):
    """OTB precision plot: one curve per tracker, legend ``name [precision@20]`` best first.

    ``curves`` maps a tracker name to its (mean) precision curve over ``PRECISION_THRESHOLDS``.
    """
    at = int(PRECISION_AT)
    items = [(name, [float(v) for v in c]) for name, c in curves.items() if c is not None]
    items.sort(key=lambda kv: -kv[1][at])
    fig, ax = _figure()
    for name, c in items:
        ax.plot(PRECISION_THRESHOLDS, c, linewidth=2, label=f"{name} [{c[at]:.3f}]")
    ax.axvline(at, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(0, PRECISION_THRESHOLDS[-1])
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Location error threshold (px)")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    if items:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_frame_costs(costs: Mapping[str, Sequence[float]], path,
                     title: str = "Per-frame cost", log_y: bool = False):
    """Per-frame cost (ms) over the frame index, one line per backend, to spot spikes.

    Each backend's median over frames after the first is drawn as a dashed line.
    """
    import numpy as np

    fig, ax = _figure(figsize=(8.0, 4.5))
    for name, values in costs.items():
        t = np.asarray(list(values), dtype=np.float64)
        if t.size == 0:
            continue
        (line,) = ax.plot(np.arange(t.size), t, linewidth=1, marker=".", markersize=3,
                          label=str(name))
        if t.size > 1:
            ax.axhline(float(np.median(t[1:])), color=line.get_color(), linestyle="--",
                       linewidth=0.8, alpha=0.7)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("Frame")
    _integer_xaxis(ax)
    ax.set_ylabel("Time (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    if costs:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scores(scores: Sequence[float], path, ok: Sequence[bool] | None = None,
                title: str = "Target score", threshold: float | None = 0.0):
    """Target score over the frame index; frames with ``ok[i]`` false are marked red.

    ``threshold`` (the tracker's success score, 0 for MDNet) is drawn as a dotted line;
    pass ``None`` to leave it out.
    """
    import numpy as np

    s = np.asarray(list(scores), dtype=np.float64)
    if ok is not None and len(ok) != len(s):
        raise ValueError(f"ok has {len(ok)} entries but scores has {len(s)}")
    fig, ax = _figure(figsize=(8.0, 3.5))
    x = np.arange(s.size)
    ax.plot(x, s, linewidth=1, color="tab:blue", label="score")
    if ok is not None:
        bad = ~np.asarray(ok, dtype=bool)
        if bad.any():
            ax.scatter(x[bad], s[bad], color="tab:red", marker="x", s=18, zorder=3,
                       label="failed")
    if threshold is not None:
        ax.axhline(threshold, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("Frame")
    _integer_xaxis(ax)
    ax.set_ylabel("Score")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- report

def _score_dict(s) -> dict:
    if isinstance(s, SequenceScore):
        return s.to_dict()
    return SequenceScore.from_dict(s).to_dict()


def _json_safe(obj):
    """Recursively turn numpy scalars/arrays into plain values, NaN/inf into None."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return v if math.isfinite(v) else None
    return str(obj)


def _mean_of(values):
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def write_report(out_dir, results: Mapping[str, Mapping[str, Mapping]],
                 title: str = "One-pass evaluation", preface: str | None = None) -> dict:
    """See :func:`_write_report`; a folder that cannot be written is the user's to fix."""
    from .errors import TrackerInputError
    from .outputs import check_output_folder

    check_output_folder(out_dir, "report folder")
    try:
        return _write_report(out_dir, results, title, preface)
    except OSError as e:
        raise TrackerInputError(f"cannot write the report to {out_dir}: {e.strerror or e}; pass a writable folder") from None


def _write_report(out_dir, results: Mapping[str, Mapping[str, Mapping]],
                  title: str = "One-pass evaluation", preface: str | None = None) -> dict:
    """Write ``results.json``, ``results.md``, ``success.png`` and ``precision.png``.

    ``results`` is ``{tracker: {sequence: {"score": SequenceScore | dict, "cost": dict}}}``
    where ``cost`` (optional) is a :func:`runtime.evaluation.cost_stats` dict and an
    optional ``"stages"`` entry a :func:`runtime.evaluation.stage_stats` dict.

    The markdown table has one row per sequence (union over trackers, in first-seen
    order) with AUC / precision@20 / mean IoU / fps per tracker side by side, and a Mean
    row: the per-sequence mean of the scores (OTB convention) and the mean of the
    per-sequence fps. Missing values show as ``-``. Returns ``{"json", "markdown",
    "success", "precision"}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trackers = list(results.keys())

    sequences: list[str] = []
    for t in trackers:
        for s in results[t]:
            if s not in sequences:
                sequences.append(s)

    data = {"title": title,
            "success_thresholds": [round(float(v), 10) for v in SUCCESS_THRESHOLDS],
            "precision_thresholds": [int(v) for v in PRECISION_THRESHOLDS],
            "precision_at": int(PRECISION_AT),
            "trackers": {}}
    means = {}
    for t in trackers:
        seqs = {}
        for s, entry in results[t].items():
            e = {"score": _score_dict(entry["score"]), "cost": entry.get("cost")}
            if "stages" in entry:
                e["stages"] = entry["stages"]
            if entry.get("error"):  # a run that failed part-way (a peer's cv2.error): say so beside its scores
                e["error"] = entry["error"]
            seqs[s] = e
        mean = mean_scores([e["score"] for e in seqs.values()])
        mean["fps"] = _mean_of((e["cost"] or {}).get("fps") for e in seqs.values())
        means[t] = mean
        data["trackers"][t] = {"sequences": seqs, "mean": mean}
    data = _json_safe(data)

    json_path = out / "results.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")

    # Score table.
    headers = ["Sequence"]
    for t in trackers:
        headers += [f"{t} AUC", f"{t} P@{PRECISION_AT}", f"{t} mIoU", f"{t} fps"]
    rows = []
    for s in sequences:
        row = [s]
        for t in trackers:
            e = data["trackers"][t]["sequences"].get(s)
            if e is None:
                row += [None] * 4
                continue
            sc, cost = e["score"], e["cost"] or {}
            row += [sc["auc"], sc["precision"], sc["mean_iou"], cost.get("fps")]
        rows.append(row)
    mean_row = ["Mean"]
    for t in trackers:
        m = means[t]
        mean_row += [m["auc"], m["precision"], m["mean_iou"], m["fps"]]
    rows.append(mean_row)

    parts = [f"# {title}\n", *([preface + "\n"] if preface else []),
             f"One-pass evaluation: AUC of the success curve (IoU > t, t in "
             f"linspace(0, 1, 21)), precision at {PRECISION_AT} px centre error, mean IoU "
             f"over frames with ground truth; Mean = per-sequence average.\n",
             markdown_table(headers, rows)]

    # Cost table (only when some entry carries a cost).
    cost_rows = []
    for t in trackers:
        for s, e in data["trackers"][t]["sequences"].items():
            c = e.get("cost")
            if c:
                cost_rows.append([t, s, c.get("n_frames"), c.get("first_ms"), c.get("median_ms"),
                                  c.get("p95_ms"), c.get("max_ms"), c.get("fps")])
    if cost_rows:
        parts.append("\n## Per-frame cost (ms; median, p95, max and fps over the frames after the first; "
                     "frames counts all)\n")
        parts.append(markdown_table(
            ["Tracker", "Sequence", "frames", "first", "median", "p95", "max", "fps"],
            cost_rows))

    stage_rows = []
    for t in trackers:
        for s, e in data["trackers"][t]["sequences"].items():
            for stage, st in (e.get("stages") or {}).items():
                stage_rows.append([t, s, stage, st.get("first_ms"), st.get("median_ms"),
                                   st.get("p95_ms"), st.get("max_ms")])
    if stage_rows:
        parts.append("\n## Per-stage cost (ms)\n")
        parts.append(markdown_table(
            ["Tracker", "Sequence", "Stage", "first", "median", "p95", "max"], stage_rows))

    md_path = out / "results.md"
    md_path.write_text("\n".join(parts))

    success_path = plot_success({t: means[t]["success_curve"] for t in trackers},
                                out / "success.png", title=f"Success plot - {title}")
    precision_path = plot_precision({t: means[t]["precision_curve"] for t in trackers},
                                    out / "precision.png", title=f"Precision plot - {title}")
    return {"json": json_path, "markdown": md_path, "success": success_path,
            "precision": precision_path}
