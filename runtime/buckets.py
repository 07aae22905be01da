"""The bucket policy: the only code that decides patch shapes.

Every frame the tracker crops one patch around the previous target and runs the conv
extractor on it. The patch must come from a small fixed set of shapes ("buckets") so that
each shape has one pre-built MXNet executor / ONNX session / compiled TVM module and no
frame ever re-binds, autotunes or compiles. Training (``train_mx``) and the runtime both
import this module, so the shapes the model was trained on are the shapes it runs on.

Geometry of a patch: ``patch = (image - offset) * scale``; the patch is ``shape = (H, W)``
pixels. The search region (target plus context) is centred in the patch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import is_valid_box

# (H, W) pairs, multiples of 32 so that the stride-8 feature map is whole and friendly to
# compiled kernels. Square ones for square-ish regions, 8:5 and 3:2 for elongated ones.
DEFAULT_SHAPES = (
    (192, 192),
    (224, 224),
    (256, 256),
    (160, 256),
    (256, 160),
    (192, 288),
    (288, 192),
    (288, 288),
)
MAX_BUCKETS = 8


@dataclass(frozen=True)
class PatchGeometry:
    """Where a patch sits in the image: ``patch_xy = (image_xy - offset) * scale``."""

    bucket: int
    shape: tuple  # (H, W)
    scale: float
    offset: tuple  # (ox, oy) in image pixels

    def to_patch(self, boxes) -> np.ndarray:
        """Image ``(x, y, w, h)`` boxes -> patch pixel boxes."""
        b = np.array(boxes, dtype=np.float64)
        out = b * self.scale
        out[..., 0] = (b[..., 0] - self.offset[0]) * self.scale
        out[..., 1] = (b[..., 1] - self.offset[1]) * self.scale
        return out

    def to_image(self, boxes) -> np.ndarray:
        """Patch pixel ``(x, y, w, h)`` boxes -> image boxes (inverse of :meth:`to_patch`)."""
        b = np.array(boxes, dtype=np.float64)
        out = b / self.scale
        out[..., 0] = b[..., 0] / self.scale + self.offset[0]
        out[..., 1] = b[..., 1] / self.scale + self.offset[1]
        return out

    def sample_bounds(self, image_size) -> np.ndarray:
        """The image region (x, y, w, h) where samples have features: the patch cut by the
        image of ``(width, height)``; the whole patch where that cut is under 2 px."""
        h, w = self.shape
        x0, y0, pw, ph = self.to_image([0.0, 0.0, w, h])
        x1, y1 = max(x0, 0.0), max(y0, 0.0)
        x2, y2 = min(x0 + pw, image_size[0]), min(y0 + ph, image_size[1])
        if x2 - x1 < 2 or y2 - y1 < 2:
            return np.array([x0, y0, pw, ph])
        return np.array([x1, y1, x2 - x1, y2 - y1])

    def affine(self) -> np.ndarray:
        """2x3 matrix mapping image pixel coordinates to patch coordinates (for warpAffine).

        Pixel centres follow OpenCV: pixel i covers [i, i+1) and has its centre at i + 0.5,
        so the continuous map x' = (x - ox) * s becomes (i' + .5) = (i + .5 - ox) * s.
        """
        s = self.scale
        ox, oy = self.offset
        return np.array(
            [[s, 0.0, (0.5 - ox) * s - 0.5], [0.0, s, (0.5 - oy) * s - 0.5]], dtype=np.float64
        )


@dataclass(frozen=True)
class BucketPolicy:
    """A fixed set of patch shapes and the rule that maps a target onto one of them.

    ``target_size``: the target's geometric-mean side in patch pixels (the patch is scaled
    so that the target always looks about this big, as in RT-MDNet's 107 px crop).
    ``context``: the search region extends ``context * mean(w, h)`` beyond the target on
    each side; it must cover the candidate translations (``TrackerParams.trans`` * mean(w, h),
    times the widening on failure).
    ``max_upscale``: tiny targets are enlarged at most this much (more context instead).
    """

    shapes: tuple = DEFAULT_SHAPES
    target_size: float = 64.0
    context: float = 1.0
    max_upscale: float = 6.0
    stride: int = field(default=8)

    def __post_init__(self):
        shapes = tuple((int(h), int(w)) for h, w in self.shapes)
        if not 1 <= len(shapes) <= MAX_BUCKETS:
            raise ValueError(f"a bucket set holds 1 to {MAX_BUCKETS} shapes, got {len(shapes)}")
        if len(set(shapes)) != len(shapes):
            raise ValueError(f"duplicate bucket shapes in {shapes}")
        for h, w in shapes:
            if h <= 0 or w <= 0 or h % self.stride or w % self.stride:
                raise ValueError(f"bucket shape {(h, w)} must be positive multiples of {self.stride}")
        object.__setattr__(self, "shapes", shapes)

    # -- the pure functions -------------------------------------------------------------
    def search_region(self, box, widen: float = 1.0) -> np.ndarray:
        """The image region (x, y, w, h) the patch must cover for a target ``box``."""
        x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        m = self.context * widen * (w + h) / 2.0
        return np.array([x - m, y - m, w + 2 * m, h + 2 * m])

    def select(self, box, region=None) -> PatchGeometry:
        """Map (target box, search region) to (bucket, scale, offset).

        The scale puts the target at ``target_size``; the bucket is the smallest shape that
        holds the whole region at that scale. When none does, the scale shrinks until the
        region fits the shape that needs the least shrinking.
        """
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if not is_valid_box(box):
            raise ValueError(f"target box must be finite with positive size, got {box.tolist()}")
        region = self._region(box, region)
        s0 = self._base_scale(box)
        rw, rh = region[2] * s0, region[3] * s0
        best, best_key = None, None
        for i, (h, w) in enumerate(self.shapes):
            fit = min(w / rw, h / rh)  # >= 1: region fits at s0
            key = (0, h * w) if fit >= 1.0 else (1, -fit, h * w)
            if best_key is None or key < best_key:
                best, best_key = i, key
        return self._fit(best, s0, region)

    def for_shape(self, box, bucket: int, region=None) -> PatchGeometry:
        """Fit ``region`` into a given bucket (used to put several frames into one batch)."""
        box = np.asarray(box, dtype=np.float64).reshape(4)
        return self._fit(bucket, self._base_scale(box), self._region(box, region))

    def _region(self, box, region) -> np.ndarray:
        return np.asarray(self.search_region(box) if region is None else region, dtype=np.float64).reshape(4)

    def _base_scale(self, box) -> float:
        """Patch pixels per image pixel that put the target at ``target_size`` (capped for tiny targets)."""
        return min(self.target_size / np.sqrt(box[2] * box[3]), self.max_upscale)

    @staticmethod
    def _centred(bucket: int, shape, s: float, region) -> PatchGeometry:
        """A patch of ``shape`` at scale ``s`` with ``region``'s centre at its centre."""
        h, w = shape
        cx = region[0] + region[2] / 2.0
        cy = region[1] + region[3] / 2.0
        return PatchGeometry(bucket=bucket, shape=(h, w), scale=float(s),
                             offset=(float(cx - (w / 2.0) / s), float(cy - (h / 2.0) / s)))

    def _fit(self, bucket: int, s0: float, region) -> PatchGeometry:
        """Scale ``s0`` (shrunk if the region does not fit) with the region centred in ``bucket``."""
        h, w = self.shapes[bucket]
        s = s0 * min(1.0, w / (region[2] * s0), h / (region[3] * s0))
        return self._centred(bucket, (h, w), s, region)

    def unbucketed(self, box, region=None) -> PatchGeometry:
        """The patch the region needs at the target's scale, rounded up to the stride only.

        This is the original prototype's behaviour, kept as the benchmark baseline: nearly
        every frame is a new shape, so every frame re-binds (bucket index -1).
        """
        box = np.asarray(box, dtype=np.float64).reshape(4)
        region = self._region(box, region)
        limit = max(max(hw) for hw in self.shapes)
        s = min(self._base_scale(box), limit / max(region[2], region[3]))
        st = self.stride
        w = int(np.ceil(region[2] * s / st) * st)
        h = int(np.ceil(region[3] * s / st) * st)
        return self._centred(-1, (h, w), s, region)

    def feature_shape(self, bucket: int) -> tuple:
        h, w = self.shapes[bucket]
        return (h // self.stride, w // self.stride)

    def to_dict(self) -> dict:
        return {
            "shapes": [list(s) for s in self.shapes],
            "target_size": self.target_size,
            "context": self.context,
            "max_upscale": self.max_upscale,
            "stride": self.stride,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BucketPolicy":
        return cls(
            shapes=tuple(tuple(s) for s in d["shapes"]),
            target_size=float(d["target_size"]),
            context=float(d["context"]),
            max_upscale=float(d.get("max_upscale", cls.max_upscale)),
            stride=int(d.get("stride", cls.stride)),
        )


def crop_patch(image: np.ndarray, geom: PatchGeometry, fill=(0, 0, 0)) -> np.ndarray:
    """Crop and resize the patch described by ``geom`` out of a BGR uint8 image.

    One ``cv2.warpAffine`` does crop, scale and border fill together (bilinear: the extractor
    is trained on this same resampling). Shrinking by more than 2x area-averages the image
    first, which bilinear sampling alone would alias.
    """
    import cv2

    h, w = geom.shape
    if geom.scale < 0.5 and min(image.shape[:2]) * 2.0 * geom.scale >= 1.0:
        # Bilinear sampling aliases when shrinking more than 2x: area-average first
        # (not for an image so thin that a side would shrink to nothing).
        r = 2.0 * geom.scale
        image = cv2.resize(image, None, fx=r, fy=r, interpolation=cv2.INTER_AREA)
        geom = PatchGeometry(geom.bucket, geom.shape, geom.scale / r,
                             (geom.offset[0] * r, geom.offset[1] * r))
    return cv2.warpAffine(
        image, geom.affine(), (w, h), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill),
    )


def normalise(patch: np.ndarray, mean) -> np.ndarray:
    """A BGR (H, W, 3) patch as the extractor takes it: ``mean`` subtracted, a contiguous
    (3, H, W) float32 array. Training's sampler (which jitters colour between the crop and
    this) and :func:`extractor_input` both end with it, so the two cannot drift apart."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3)
    return np.ascontiguousarray((patch.astype(np.float32) - mean).transpose(2, 0, 1))


def extractor_input(image: np.ndarray, geom: PatchGeometry, mean) -> np.ndarray:
    """The conv extractor's input for ``geom``: the patch cropped with the model's ``mean``
    as border fill, mean-subtracted, as a (1, 3, H, W) float32 array (BGR channel order)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3)
    return normalise(crop_patch(image, geom, fill=mean), mean)[None]
