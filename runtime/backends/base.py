"""The feature-backend interface."""
from __future__ import annotations

import numpy as np


class FeatureBackend:
    """Runs the conv extractor on a normalised patch of one bucket shape.

    ``extract(bucket, patch)`` takes a float32 array (1, 3, H, W) whose (H, W) is the
    bucket's shape and returns the stride-8 feature map (1, C, H/8, W/8) as float32.
    Implementations prepare every bucket at construction, so no frame binds, compiles or
    loads anything.
    """

    name = "base"

    def __init__(self, model, device: str = "cpu"):
        self.model = model
        self.policy = model.policy
        self.device = device

    def extract(self, bucket: int, patch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check(self, bucket: int, patch: np.ndarray) -> None:
        h, w = self.policy.shapes[bucket]
        if patch.shape != (1, 3, h, w):
            raise ValueError(f"bucket {bucket} takes (1, 3, {h}, {w}) patches, got {patch.shape}")
