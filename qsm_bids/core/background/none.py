"""Identity background stage, for single-step inversions that remove the background field
themselves (e.g. :func:`qsm_bids.core.inversion.single_step.sstv`)."""

from __future__ import annotations

import numpy as np

__all__ = ["no_background_removal"]


def no_background_removal(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Pass the total field through unchanged (masked): no background removal.

    Use it only with a single-step inversion that models the background field itself, i.e.
    pair it with :func:`qsm_bids.core.inversion.single_step.sstv` (single-step TV,
    Chatnuntawech et al., NMR Biomed 2017;30:e3570). Any other inversion would treat the
    background field as tissue field.

    Parameters
    ----------
    field : (X, Y, Z) array
        Total field map, any linear unit (the pipeline passes Hz).
    mask : (X, Y, Z) array
        Brain mask (non-zero = inside).
    voxel_size : 3 floats
        Voxel size in mm (unused; uniform stage signature).
    b0_dir : 3 floats
        B0 direction in voxel-index space (unused; uniform stage signature).

    Returns
    -------
    field : (X, Y, Z) float32 array
        ``field * mask``, same unit as the input.
    mask : (X, Y, Z) bool array
        The input mask, not eroded.
    """
    del voxel_size, b0_dir  # uniform stage signature
    f = np.asarray(field, dtype=np.float32)
    m = np.asarray(mask) != 0
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"field {f.shape} and mask {m.shape} must be 3D arrays of one shape")
    return np.where(m, f, np.float32(0)).astype(np.float32), m
