"""Checks on where a tool will write, made before anything slow runs, so a bad path costs
nothing and a one-line error says what to do."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import TrackerInputError


def check_output_path(path, flag: str) -> None:
    """A file the tool will write: not a folder, in a folder that exists and is writable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise TrackerInputError(f"{flag} {p} is a folder; give a file path")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise TrackerInputError(f"{flag} {p}: {parent} is a file, not a folder; give a path in a folder")
    if not parent.is_dir():
        raise TrackerInputError(f"{flag} {p}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise TrackerInputError(f"{flag} {p}: folder {parent} is not writable")


def check_output_folder(path, flag: str) -> None:
    """A folder the tool will create or write into: not a file, and creatable and writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise TrackerInputError(f"{flag} {p} is a file; give a folder")
    nearest = next((q for q in [p, *p.parents] if q.exists()), None)
    if nearest is None or not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        raise TrackerInputError(f"{flag} {p} cannot be created or written (nearest existing: {nearest}); "
                                "give a writable folder")


def box_line(box) -> str:
    """One result row, OTB convention: ``x,y,w,h`` in pixels, 2 decimals, ``nan`` where the
    frame has no box (before the start, or a lost frame). The toolkits read it with numpy."""
    return ",".join(f"{float(v):.2f}" for v in box)
