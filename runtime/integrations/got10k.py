"""The tracker for the GOT-10k toolkit (``pip install got10k``, extra ``toolkits``).

    from got10k.experiments import ExperimentOTB
    from runtime.integrations.got10k import GOT10kTracker

    tracker = GOT10kTracker()                      # the shipped model, MXNet, CPU
    experiment = ExperimentOTB("data/OTB", version=2015)
    experiment.run(tracker)
    experiment.report([tracker.name])

The toolkit hands ``init`` / ``update`` PIL images in RGB (``ExperimentVOT(read_image=False)``:
file paths) and expects ``[x, y, w, h]`` back; this class converts to the BGR arrays
:class:`runtime.Tracker` takes and returns its box as a float array. ``examples/got10k_eval.py``
is a command-line front end.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

try:
    from got10k.trackers import Tracker as _ToolkitTracker
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "runtime.integrations.got10k needs the GOT-10k toolkit: pip install -e '.[toolkits]' "
        f"(or pip install got10k==0.1.3 shapely six) ({e})"
    ) from e

__all__ = ["GOT10kTracker", "to_bgr"]


def to_bgr(image) -> np.ndarray:
    """A PIL image (any mode), an RGB / grey array or an image path as the BGR uint8 array the
    runtime takes.

    Paths because ``ExperimentVOT(read_image=False)`` hands ``init`` / ``update`` the frame's
    file name instead of an image; they are read as ``runtime.track`` reads frames.
    ``cv2.cvtColor`` rather than a reversed-axis copy: the toolkit times this conversion as
    part of every frame, and the copy costs 2.8 ms on a 576x432 frame, cvtColor 0.6 ms.
    """
    if isinstance(image, (str, os.PathLike)):
        from runtime.sources import read_image

        return read_image(image)  # BGR already; a missing or corrupt file raises SequenceError naming it
    if not isinstance(image, np.ndarray):  # PIL.Image.Image (the toolkit's convention)
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image[:, :, ::-1])
    if image.ndim == 3 and image.shape[2] == 4:  # RGBA -> BGRA; the runtime drops alpha
        return np.ascontiguousarray(image[:, :, [2, 1, 0, 3]])
    return image  # grey: the runtime converts it


class GOT10kTracker(_ToolkitTracker):
    """:class:`runtime.Tracker` behind the GOT-10k toolkit's ``Tracker`` interface.

    ``model`` defaults to the shipped ``models/default`` (found from the package, whatever the
    working directory); ``backend``, ``device``, ``seed``, ``params``, ``artifacts`` and
    keyword overrides of :class:`runtime.TrackerParams` go to :class:`runtime.Tracker`.
    The tracker is deterministic for a seed, so the toolkit runs each sequence once
    (``is_deterministic=True``); pass ``is_deterministic=False`` to get GOT-10k's three runs.
    """

    def __init__(self, model=None, backend: str = "mxnet", device: str = "cpu", seed: int = 0,
                 name: str = "mdtrack", is_deterministic: bool = True, params=None, artifacts=None,
                 **params_kw):
        super().__init__(name=name, is_deterministic=is_deterministic)
        from runtime.tracker import Tracker

        self.tracker = Tracker(model, backend=backend, device=device,
                               seed=seed, params=params, artifacts=artifacts, **params_kw)
        self.last = None  # the runtime's TrackResult of the last call (score, ok, ms, stages)

    def init(self, image, box):
        self.last = self.tracker.init(to_bgr(image), np.asarray(box, dtype=np.float64))

    def update(self, image) -> np.ndarray:
        self.last = self.tracker.update(to_bgr(image))
        return np.asarray(self.last.box, dtype=np.float64).copy()
