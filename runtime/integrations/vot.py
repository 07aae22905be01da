"""The tracker as a VOT toolkit (TraX) tracker: ``python -m runtime.integrations.vot``.

The toolkit starts this module once per sequence and talks TraX over its stdin/stdout:
the first request carries the first image and a rectangle, each later one an image path
(or, re-initialising after a failure, another image and rectangle), and the tracker answers
every frame with a rectangle and a ``confidence`` (the runtime's target score; above 0 means
found). See ``runtime/integrations/README.md`` for the
``trackers.ini`` entry.

The loop talks to a *handle* with the four methods of the ``vot`` helper module of the VOT
integration examples (``vot.py``: ``handle = vot.VOT("rectangle")``, ``handle.region()``,
``handle.frame()``, ``handle.report(vot.Rectangle(...), confidence)``). By default the handle
is :class:`TraxHandle`, a built-in equivalent on the ``trax`` module of the ``vot-trax``
package; ``--handle helper`` (``MDTRACK_VOT_HANDLE=helper``) uses ``import vot`` instead.
The built-in one is the default because the helper's single-object ``report`` passes one
region where vot-trax 4.x's ``Server.status`` asserts a list. :func:`track` takes the handle
as an argument, so the loop runs against any object with those methods (tests pass a stub).

Options come from the command line or, since the toolkit starts the module without
arguments, from ``MDTRACK_MODEL``, ``MDTRACK_BACKEND``, ``MDTRACK_DEVICE``,
``MDTRACK_SEED`` and ``MDTRACK_ARTIFACTS`` (set them with ``env_MDTRACK_MODEL = ...`` in
``trackers.ini``).
"""
from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import sys

from runtime.backends import BACKENDS

__all__ = ["Rectangle", "TraxHandle", "open_handle", "track", "build_parser", "main"]

log = logging.getLogger("runtime.integrations.vot")

# Same fields as the helper's ``vot.Rectangle`` (a namedtuple there too).
Rectangle = collections.namedtuple("Rectangle", ["x", "y", "width", "height"])

# Confidence reported for a frame whose image cannot be read (the last box is kept).
UNREADABLE_CONFIDENCE = 0.0


class TraxHandle:
    """A single-object, rectangle-only stand-in for the helper's ``vot.VOT`` on ``trax.Server``.

    Unlike the helper, it answers an ``initialize`` request only once the tracker has
    initialised (at the next :meth:`frame` call): the toolkit times each reply, and an early
    answer would record the initialisation as free and charge it (0.7-1.1 s) to the next frame.
    A later ``initialize`` (the toolkit re-initialising after a failure, or starting another
    repetition) is taken in the same session: :meth:`frame` returns its image and sets
    :attr:`restarted`. So the server does not declare itself a ``vot`` wrapper, the flag on
    which the VOT toolkit restarts the process (and reloads the model) for every initialisation.
    """

    def __init__(self, region_format: str = "rectangle"):
        try:
            import trax
        except ImportError as e:
            raise ImportError("the VOT integration needs either the vot.py helper of the VOT integration "
                              "examples on the path or the vot-trax package (pip install vot-trax)") from e
        if region_format != trax.Region.RECTANGLE:
            raise ValueError(f"only the rectangle region format is supported, not {region_format!r}")
        self._trax_mod = trax
        self._pending = None  # the objects of an initialize request not answered yet
        self.restarted = False  # set by frame() when it returns the image of a new initialize request
        try:
            self._trax = trax.Server([trax.Region.RECTANGLE], [trax.Image.PATH], ["color"], tracker_name="mdtrack")
            request = self._trax.wait()
        except trax.TraxException as e:
            from runtime.errors import TrackerInputError

            raise TrackerInputError(f"no TraX client on stdin/stdout ({e}): this entry is started by the VOT "
                                    "toolkit (vot evaluate), not by hand") from None
        if request.type != "initialize":
            raise RuntimeError(f"TraX: expected an initialize request with one object, got {request.type!r}")
        self._image = self._start(request)

    def _start(self, request):
        """Take an initialize request: its region, its reply (deferred), its image path."""
        if not request.objects:
            raise RuntimeError("TraX: an initialize request without an object")
        region, _ = request.objects[0]
        self._region = Rectangle(*region.bounds())
        self._pending = request.objects
        return self._path(request.image)

    @staticmethod
    def _path(images):
        paths = [img.path() for _, img in images.items()]
        return paths[0] if len(paths) == 1 else paths

    def _answer_initialize(self) -> None:
        if self._pending is not None:
            objects, self._pending = self._pending, None
            self._trax.status(objects)

    def region(self) -> Rectangle:
        return self._region

    def frame(self):
        """The next image path, or ``None`` when the toolkit ends the session."""
        if self._image is not None:
            image, self._image = self._image, None
            return image
        self._answer_initialize()  # the tracker has initialised on the image returned last
        request = self._trax.wait()
        if request.type == "frame":
            return self._path(request.image)
        if request.type == "initialize":
            self.restarted = True
            return self._start(request)
        return None

    def report(self, region, confidence=None) -> None:
        self._answer_initialize()
        props = {} if confidence is None else {"confidence": confidence}
        rect = self._trax_mod.Rectangle.create(region.x, region.y, region.width, region.height)
        self._trax.status([(rect, props)])

    def quit(self, reason=None) -> None:
        """End the session; ``reason`` reaches the toolkit, which shows it with its error."""
        if getattr(self, "_trax", None) is not None:
            self._trax.quit(reason)
            self._trax = None


def open_handle(region_format: str = "rectangle", which: str = "builtin"):
    """``(handle, Rectangle)`` for ``which``: ``"builtin"`` (:class:`TraxHandle`) or ``"helper"``
    (``vot.VOT`` and ``vot.Rectangle`` of the VOT integration's ``vot.py``).

    A ``vot`` module without a ``VOT`` class (the VOT toolkit package itself, when it comes
    first on the path) is not the helper and is refused with a hint.
    """
    if which == "builtin":
        return TraxHandle(region_format), Rectangle
    if which != "helper":
        raise ValueError(f"unknown handle {which!r}: use builtin or helper")
    try:
        import vot as helper
    except ImportError as e:
        raise ImportError("--handle helper: put the folder holding the VOT integration's vot.py on "
                          "the path (trackers.ini: paths = ...)") from e
    if not (hasattr(helper, "VOT") and hasattr(helper, "Rectangle")):
        raise ImportError(f"--handle helper: the 'vot' module found ({getattr(helper, '__file__', '?')}) is "
                          "not the integration helper vot.py (is it the VOT toolkit package?); put the "
                          "helper's folder first in trackers.ini paths")
    return helper.VOT(region_format), helper.Rectangle


def _read(path):
    """The frame as ``runtime.track`` reads it (a truncated JPEG is unreadable, not half grey), or None."""
    from runtime.errors import SequenceError
    from runtime.sources import read_image

    if isinstance(path, (list, tuple)):  # several channels: the tracker uses the colour one
        path = path[0]
    try:
        return read_image(path)
    except SequenceError:
        return None


def track(handle, tracker, rectangle=Rectangle, read=_read) -> int:
    """Run the TraX loop on ``handle`` with ``tracker`` (``init(image, box)`` / ``update(image)``).

    ``handle`` has the helper's methods: ``region()``, ``frame()`` (an image path, ``None`` at
    the end) and ``report(region, confidence)``. One report per frame after the first (the
    first is answered by the handle). A handle whose ``restarted`` is true after ``frame()``
    (:class:`TraxHandle`) has been re-initialised: the tracker starts again from its
    ``region()`` on that image. ``rectangle`` builds the reported region, ``read`` turns a path
    into a BGR image (``None`` when it cannot). Returns the number of frames reported.
    """
    from runtime.errors import TrackerInputError

    def start(path):
        sel = handle.region()
        image = read(path)
        if image is None:
            raise TrackerInputError(f"cannot read the frame to initialise on, {path}")
        result = tracker.init(image, [float(sel.x), float(sel.y), float(sel.width), float(sel.height)])
        return [float(v) for v in result.box], image.shape[:2]

    path = handle.frame()
    if not path:
        return 0
    box, size = start(path)
    reported = 0
    while True:
        path = handle.frame()
        if not path:
            break
        if getattr(handle, "restarted", False):  # re-initialised (after a failure, or a new repetition)
            handle.restarted = False
            box, size = start(path)
            continue
        image = read(path)
        if image is None or image.shape[:2] != size:
            why = "cannot read" if image is None else f"{image.shape[1]}x{image.shape[0]} pixels, not {size[1]}x{size[0]}:"
            log.warning("%s %s; keeping the last box", why, path)
            confidence = UNREADABLE_CONFIDENCE
        else:
            result = tracker.update(image)
            box = [float(v) for v in result.box]
            confidence = float(result.score)
            if not math.isfinite(confidence):
                confidence = UNREADABLE_CONFIDENCE
        handle.report(rectangle(*box), confidence)
        reported += 1
    return reported


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (from --seed or $MDTRACK_SEED), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="python -m runtime.integrations.vot",
                                 description="VOT toolkit (TraX) tracker entry; started by the toolkit, "
                                             "it speaks TraX on stdin/stdout.")
    ap.add_argument("--model", default=env("MDTRACK_MODEL"),
                    help="model folder (default $MDTRACK_MODEL, else the shipped models/default)")
    ap.add_argument("--backend", default=env("MDTRACK_BACKEND", "mxnet"), choices=BACKENDS,
                    help="feature backend (default $MDTRACK_BACKEND or mxnet)")
    ap.add_argument("--device", default=env("MDTRACK_DEVICE", "cpu"), help="cpu or cuda[:N] (default $MDTRACK_DEVICE or cpu)")
    ap.add_argument("--seed", type=_seed, default=env("MDTRACK_SEED", "0"),  # argparse converts a str default too
                    help="random seed (default $MDTRACK_SEED or 0)")
    ap.add_argument("--artifacts", default=env("MDTRACK_ARTIFACTS"), help="prebuilt compiled artifact set (default $MDTRACK_ARTIFACTS)")
    ap.add_argument("--handle", default=env("MDTRACK_VOT_HANDLE", "builtin"), choices=("builtin", "helper"),
                    help="protocol handle: the built-in one on vot-trax, or the VOT integration's vot.py "
                         "helper (default $MDTRACK_VOT_HANDLE or builtin)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    # argparse checks choices on the command line only, not on defaults from the environment
    for flag, var, choices in (("backend", "MDTRACK_BACKEND", BACKENDS),
                               ("handle", "MDTRACK_VOT_HANDLE", ("builtin", "helper"))):
        if getattr(args, flag) not in choices:
            ap.error(f"--{flag} (or ${var}) {getattr(args, flag)!r}: use one of {', '.join(choices)}")
    from runtime.errors import TrackerInputError, cli_logging

    cli_logging()
    # stdout (file descriptor 1) carries the protocol: keep Python's prints off it.
    sys.stdout = sys.stderr
    from runtime.tracker import Tracker

    handle, reason = None, None
    try:
        # Load the model before the handshake, so a bad path fails with a readable message.
        tracker = Tracker(args.model or None, backend=args.backend, device=args.device, seed=args.seed,
                          artifacts=args.artifacts if args.backend != "mxnet" else None)
        handle, rectangle = open_handle("rectangle", args.handle)
        track(handle, tracker, rectangle)
    except (TrackerInputError, ImportError) as e:  # ImportError: neither vot.py nor vot-trax
        reason = str(e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if isinstance(handle, TraxHandle):
            handle.quit(reason)  # the toolkit shows the reason, not just "server terminated the session"
        elif getattr(handle, "quit", None) is not None:
            handle.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
