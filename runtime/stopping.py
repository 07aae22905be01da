"""How the command line stops early and still leaves whole outputs: a signal (Ctrl-C,
SIGTERM from ``docker stop`` or systemd, SIGHUP) or a reader of stdout that went away."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
    """A signal that stops the run at once; its argument is the signal's name. A subclass
    because CPython, once a bare KeyboardInterrupt has escaped code it ran on behalf of C
    (seen with a signal while the model loads), ends the process by SIGINT whatever
    :func:`main` returned: exit -2 instead of 143."""


class StopRequest:
    """SIGINT / SIGTERM / SIGHUP as a handler: while frames are being tracked (``deferred``)
    the first one only asks :func:`runtime.track.run` to stop after the frame in hand, so every output ends
    on the same whole frame, the video is finished (an mp4 killed mid-write is unplayable)
    and the summary is printed; a live feed has no other way to end. A second one, or one
    before tracking starts (loading the model), stops at once with KeyboardInterrupt."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.signum = None
        self.deferred = False
        self.raised = None  # the signal an Interrupted was raised for, if any

    def __call__(self, signum, frame):
        if self.deferred and self.signum is None:
            self.signum = signum
            return
        self.raised = signal.Signals(signum).name
        raise Interrupted(self.raised)

    def install(self) -> dict | None:
        """Handle the signals; returns the previous handlers for :meth:`restore`, or None off
        the main thread (Python delivers signals to the main thread only: they stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN:  # nohup, or a background job: the caller asked for it to be ignored
                continue
            old[sig] = prev
            signal.signal(sig, self)
        return old

    @staticmethod
    def restore(old: dict | None) -> None:
        for sig, prev in (old or {}).items():
            signal.signal(sig, prev)


def stopped_by(e: BaseException, stop: StopRequest | None) -> str | None:
    """The signal's name if ``e`` is how a signal stopped the run, else None. An Interrupted
    raised while TVM runs one of its Python callbacks (the compiler, nvcc while a CUDA library
    loads) comes back through TVM's FFI as RuntimeError('SIGTERM'), which the code around it
    may wrap again ("cannot load ..."): found in the chain, it counts only if the handler did
    raise for that signal."""
    if isinstance(e, Interrupted):
        return str(e)
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT"
    name = stop.raised if stop is not None else None
    seen = set()
    while name is not None and e is not None and id(e) not in seen:
        seen.add(id(e))
        last = (str(e).strip().splitlines() or [""])[-1].strip()
        if isinstance(e, KeyboardInterrupt) or (isinstance(e, RuntimeError) and last == name):
            return name
        e = e.__cause__ or e.__context__
    return None


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``, a log collector that died)."""


def stdout_failure(e: OSError, reason: bool = False) -> str:
    """What happened to stdout, for the messages: its reader went away (a closed pipe, a
    hung-up terminal; with ``reason``, the system's word for it), or the file it was
    redirected to could not take more."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"stdout could not be written ({e.strerror})"
    return f"stdout was closed ({e.strerror or e})" if reason else "stdout was closed"


def stdout_gone() -> None:
    """Point stdout at /dev/null so nothing more (not even the flush at exit) hits the closed pipe."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests' StringIO)
        pass
