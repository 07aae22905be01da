"""Image normalisation: every frame the tracker sees is a contiguous HxWx3 uint8 BGR array.

OpenCV hands back whatever the file holds when read with ``IMREAD_UNCHANGED`` (grey,
grey with a channel axis, BGR, BGRA; 8 or 16 bit; float for EXR/TIFF), and video
back-ends may do the same. Converting once, here, means the feature extractor and the
online head never have to guess the layout or the value range.
"""
from __future__ import annotations

import cv2
import numpy as np

from runtime.errors import TrackerInputError

__all__ = ["to_bgr8"]


def _describe(image) -> str:
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    return f"object of type {type(image).__name__}"


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Map the value range to 0..255: 16 bit by /257 (65535 -> 255), float [0, 1] by *255."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # (x + 128) // 257 equals round(x / 257) for integers (257 is odd: no ties).
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype.kind == "f":
        # NaN (e.g. from a float TIFF with holes) becomes black rather than undefined.
        scaled = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        # HDR highlights above 1 are clipped; but a float image in 0..255 (most values far
        # above 1) would turn white: refuse it rather than track a blank frame. A dark frame
        # of a converted uint8 (median under 2) is caught by its whole numbers above 1.
        # A subsample keeps the test cheap on large frames.
        sample = scaled[::4, ::4]
        if sample.size:
            median, top = float(np.median(sample)), float(sample.max())
            if median > 2.0 or (top > 1.0 and np.array_equal(sample, np.rint(sample))):
                raise TrackerInputError(f"float image with a median value of {median:.4g} and a maximum of {top:.4g}: "
                                        "float images are read as 0..1 (0..255 values would all be white); divide "
                                        "by 255 or pass uint8")
        return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    raise TrackerInputError(
        f"unsupported image dtype {image.dtype} (expected uint8, uint16 or float in [0, 1])"
    )


def to_bgr8(image) -> np.ndarray:
    """Return ``image`` as a contiguous HxWx3 uint8 BGR array.

    Accepts HxW grey, HxWx1, HxWx3 BGR and HxWx4 BGRA (alpha is dropped, not composited:
    trackers look at colour, and transparent pixels keep their stored colour), each as
    uint8, uint16 (divided by 257, rounded) or float in [0, 1] (times 255, clipped), in
    either byte order.
    Anything else raises :class:`TrackerInputError`, because a wrong layout would
    otherwise surface much later as a shape error deep inside the network.
    """
    if not isinstance(image, np.ndarray):
        raise TrackerInputError(f"expected an image array, got {_describe(image)}: pass a numpy array such as "
                                "cv2.imread(path) gives (a PIL image: cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR))")
    if image.ndim not in (2, 3):
        raise TrackerInputError(
            f"expected an HxW or HxWxC image, got {_describe(image)} ({image.ndim} dimensions)"
        )
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise TrackerInputError(f"image is empty: {_describe(image)}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise TrackerInputError(
            f"expected 1, 3 or 4 channels (grey, BGR, BGRA), got {_describe(image)}"
        )
    if image.dtype.kind in "uf" and not image.dtype.isnative:
        # big-endian 16-bit / float arrays (PGM, FITS and TIFF readers hand these back)
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.bool_ or image.dtype.kind not in "uf" or (
        image.dtype.kind == "u" and image.dtype not in (np.uint8, np.uint16)
    ):
        raise TrackerInputError(
            f"unsupported image dtype {image.dtype} (expected uint8, uint16 or float in [0, 1])"
        )
    img8 = _to_uint8(image)
    if channels == 1:
        out = cv2.cvtColor(np.ascontiguousarray(img8.reshape(img8.shape[:2])), cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        out = cv2.cvtColor(np.ascontiguousarray(img8), cv2.COLOR_BGRA2BGR)
    else:
        out = img8
    return np.ascontiguousarray(out)
