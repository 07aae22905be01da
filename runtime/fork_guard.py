"""MXNet does not survive ``fork``: once a process has loaded a model or made a tracker (its
engine's and OpenMP's threads are running), a child forked from it hangs at its first MXNet
computation, and ``multiprocessing`` forks by default on Linux. Such a child is refused with
one clear error instead."""
from __future__ import annotations

import os

from .errors import TrackerStateError

_PID = None  # the process that used MXNet first (inherited by a forked child)

FORKED = ("this process was forked from one that had already loaded a model or made a Tracker, and MXNet "
          "does not survive fork (it would hang); start worker processes with multiprocessing's 'spawn' or "
          "'forkserver' method (multiprocessing.get_context('spawn')), or load models only in the workers")


def mark_mxnet_used() -> None:
    global _PID
    if _PID is None:
        _PID = os.getpid()


def check_not_forked() -> None:
    if _PID not in (None, os.getpid()):
        raise TrackerStateError(FORKED)
