"""Bounding-box regression (MDNet): ridge regression from pooled conv features to the
offset between a sample box and the ground truth, learnt on the first frame only."""
from __future__ import annotations

import numpy as np


def _targets(boxes, gt):
    """R-CNN box deltas: centre shift in units of size, log size ratio."""
    bc = boxes[:, :2] + boxes[:, 2:] / 2
    gc = gt[:2] + gt[2:] / 2
    return np.concatenate([(gc - bc) / boxes[:, 2:], np.log(gt[2:] / boxes[:, 2:])], axis=1)


class BBoxRegressor:
    def __init__(self, alpha: float = 1000.0):
        self.alpha = alpha
        self.w = None

    def fit(self, feats: np.ndarray, boxes: np.ndarray, gt) -> "BBoxRegressor":
        x = np.concatenate([feats.astype(np.float64), np.ones((len(feats), 1))], axis=1)
        y = _targets(np.asarray(boxes, np.float64), np.asarray(gt, np.float64))
        # Dual form: n samples (1000) is smaller than the feature size (2304 or 4608).
        k = x @ x.T
        k[np.diag_indices_from(k)] += self.alpha
        self.w = x.T @ np.linalg.solve(k, y)
        return self

    def predict(self, feats: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64)
        x = np.concatenate([feats.astype(np.float64), np.ones((len(feats), 1))], axis=1)
        d = x @ self.w
        c = boxes[:, :2] + boxes[:, 2:] / 2 + d[:, :2] * boxes[:, 2:]
        wh = boxes[:, 2:] * np.exp(np.clip(d[:, 2:], -1.0, 1.0))
        return np.concatenate([c - wh / 2, wh], axis=1)
