"""Training report: loss curves (PNG) and a short markdown summary from a run's state.json.

    python -m train_mx.report runs/squeezenet [runs/vggm ...] --out models/default/training
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_log(run: Path) -> list:
    """The run's epoch log; a missing or damaged state.json is the user's to fix."""
    from runtime.errors import TrackerInputError

    state = run / "state.json"
    try:
        log = json.loads(state.read_text())["log"]
        if not (isinstance(log, list) and log and all("iteration" in e and "loss" in e for e in log)):
            raise ValueError("no epoch logged yet")
    except OSError as e:
        raise TrackerInputError(f"{state}: {e.strerror or e}; pass a training --out folder") from None
    except (ValueError, KeyError, TypeError) as e:
        raise TrackerInputError(f"{state} holds no training log ({e}); pass a finished or running training's --out") from None
    return log


def write(runs, out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    lines = ["| run | iterations | final train loss | held-out loss | minutes |", "|---|---:|---:|---:|---:|"]
    for run in runs:
        log = load_log(run)
        it = [e["iteration"] for e in log]
        ax.plot(it, [e["loss"] for e in log], label=f"{run.name} train")
        held = [(e["iteration"], e["heldout_loss"]) for e in log if "heldout_loss" in e]
        if held:
            ax.plot(*zip(*held), "o--", label=f"{run.name} held-out")
        minutes = sum(e["seconds"] for e in log) / 60
        lines.append(f"| {run.name} | {it[-1]} | {log[-1]['loss']:.4f} | "
                     f"{held[-1][1]:.4f} | {minutes:.1f} |" if held else
                     f"| {run.name} | {it[-1]} | {log[-1]['loss']:.4f} | - | {minutes:.1f} |")
    ax.set_xlabel("iteration")
    ax.set_ylabel("softmax loss (32 pos + 96 hard neg)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train_mx.report", description="Plot training loss curves.")
    ap.add_argument("runs", nargs="+", help="training output folders (with state.json)")
    ap.add_argument("--out", required=True, help="folder for loss.png and summary.md")
    a = ap.parse_args(argv)
    from runtime.errors import TrackerInputError
    from runtime.outputs import check_output_folder

    try:
        for r in a.runs:  # every run read before anything is written
            load_log(Path(r))
        check_output_folder(a.out, "--out")
    except TrackerInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write([Path(r) for r in a.runs], Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
