"""The one reading of a ``--device`` string, shared by the CLI, the tracker and every backend."""
from __future__ import annotations

import re

from .errors import TrackerInputError

_DEVICE = re.compile(r"(cpu)(?::\d+)?|(?:cuda|gpu)(?::(\d+))?")


def parse_device(text) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` (MXNet's ``cpu:N`` and ``gpu[:N]`` too) -> ``"cpu"`` or ``"cuda:N"``."""
    m = _DEVICE.fullmatch(str(text).strip().lower())
    if m is None:
        raise TrackerInputError(f"unknown device {text!r}; use cpu, cuda or cuda:N (N = GPU index)")
    return "cpu" if m.group(1) else f"cuda:{int(m.group(2) or 0)}"


def device_index(device: str) -> int:
    """The GPU index of a parsed CUDA device (0 for ``cpu``)."""
    return int(device.split(":")[1]) if ":" in device else 0
