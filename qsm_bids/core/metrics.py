"""Accuracy metrics against a known susceptibility (QSM challenge definitions).

Only what the demo and the tests need so far; maps are compared after removing each one's
mean inside the evaluation mask, because QSM is defined only up to a constant.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage


def evaluation_mask(mask: np.ndarray, erode_voxels: int = 3) -> np.ndarray:
    """The mask eroded by ``erode_voxels`` (6-connected steps), where metrics are taken."""
    mask = np.asarray(mask, dtype=bool)
    if erode_voxels <= 0:
        return mask
    return ndimage.binary_erosion(mask, iterations=erode_voxels)


def nrmse(x: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Normalised RMS error in percent, both maps demeaned inside ``mask``.

    ``100 * ||(x - mean x) - (t - mean t)|| / ||t - mean t||`` over the voxels of ``mask``.
    """
    m = np.asarray(mask, dtype=bool)
    xs = np.asarray(x)[m].astype(np.float64)
    ts = np.asarray(truth)[m].astype(np.float64)
    xs = xs - xs.mean()
    ts = ts - ts.mean()
    return float(100.0 * np.linalg.norm(xs - ts) / np.linalg.norm(ts))


def region_means(
    chi: np.ndarray, labels: np.ndarray, mask: np.ndarray, names: Mapping[int, str]
) -> dict[str, float]:
    """Mean of ``chi`` (ppm) in each labelled region, restricted to ``mask``.

    Regions with no voxel inside the mask are left out.
    """
    m = np.asarray(mask, dtype=bool)
    out: dict[str, float] = {}
    for label, name in names.items():
        sel = (labels == label) & m
        if sel.any():
            out[name] = float(np.mean(chi[sel], dtype=np.float64))
    return out
