"""The tracker runtime: sequence sources, geometry, bucket policy, feature backends, the
online head and the ``runtime.track`` entry point.

``Tracker`` is imported lazily so that ``import runtime`` stays cheap (MXNet loads only
when a tracker is built).
"""
import os as _os

# MXNet logs one line per bound oneDNN graph; a tracker binds many. Keep the console clean.
_os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
# Without OMP_NUM_THREADS, MXNet on x86 uses half the cores (it assumes hyper-threading):
# one of this 2-core CPU's cores sat idle and the fc head ran 1.3x slower. Set before MXNet
# loads; an explicit OMP_NUM_THREADS wins.
_os.environ.setdefault("OMP_NUM_THREADS", str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                                              else (_os.cpu_count() or 1)))

__all__ = ["Tracker", "TrackResult", "TrackerParams"]


def __getattr__(name):
    if name in ("Tracker", "TrackResult"):
        from . import tracker

        return getattr(tracker, name)
    if name == "TrackerParams":
        from .params import TrackerParams

        return TrackerParams
    raise AttributeError(name)
