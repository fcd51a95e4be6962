"""Thresholded k-space division (TKD).

References
----------
Shmueli K, de Zwart JA, van Gelderen P, et al. Magnetic susceptibility mapping of brain
tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522.
Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
threshold-based k-space division. Magn Reson Med 2010;63:1292-1304.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.inversion.common import finish, prepare
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn

__all__ = ["tkd"]


def tkd(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    threshold: float = 0.19,
) -> np.ndarray:
    """Dipole inversion by thresholded k-space division (Shmueli 2009; Wharton 2010).

    ``chi = F^-1[ F(f) / D ]`` where ``1/D`` is replaced by ``sign(D) / threshold`` for
    ``|D| < threshold``; the k = 0 term is set to zero (the result has zero mean over the
    FFT grid, which referencing removes anyway).

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local (tissue) field in ppm of B0; values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Region where the local field is valid (e.g. the eroded brain mask).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space (normalised here).
    weights : (X, Y, Z) array or None, default None
        Ignored (accepted for a uniform interface).
    threshold : float, default 0.19
        Truncation level ``delta`` of the dipole kernel (0 < delta < 2/3).

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    del weights  # direct method: no data weighting
    if not 0.0 < float(threshold) < 2.0 / 3.0:
        raise ValueError(f"threshold must be in (0, 2/3), got {threshold}")
    f, _, shape, sl = prepare(local_field, mask)
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)
    t = np.float32(threshold)
    # Wharton 2010, eq. 4: truncated inverse kernel, sign(D)/delta in the ill-conditioned cone
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(d) >= t, np.float32(1) / d, np.sign(d) / t).astype(np.float32)
    chi = irfftn(rfftn(f) * inv, s=shape)
    return finish(chi, mask, sl)
