"""Thresholded k-space division (TKD) and the helpers shared by the inversion methods.

References
----------
Shmueli K, de Zwart JA, van Gelderen P, et al. Magnetic susceptibility mapping of brain
tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522.
Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
threshold-based k-space division. Magn Reson Med 2010;63:1292-1304.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsm_bids.core.kernels import MaskBox, dipole_kernel, irfftn, laplacian_kernel, rfftn

__all__ = ["tkd"]


#: The mask's padded bounding box (shared with the background methods).
_Box = MaskBox


def _prepare(
    local_field: np.ndarray, mask: np.ndarray, *, margin: int = 8
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], _Box]:
    """Validate inputs; return the masked field on the padded bounding box of the mask.

    Returns ``(field_padded float32, mask_padded bool, padded_shape, box)``.
    """
    f = np.asarray(local_field, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"local_field {f.shape} and mask {m.shape} must be equal 3D shapes")
    box = _Box(m, margin)
    fp = box.embed(np.where(m, f, np.float32(0)))
    mp = box.embed(m.astype(np.float32)) > 0
    return fp, mp, box.shape, box


def _weights_sq(weights: np.ndarray | None, mask: np.ndarray, box: _Box) -> np.ndarray:
    """Squared data weights ``W^2`` on the box: zero outside ``mask``; ``|weights|``
    normalised to mean 1 inside it, or the mask itself when ``weights`` is None."""
    inside = np.asarray(mask).astype(bool)
    if weights is None:
        return box.embed(inside.astype(np.float32))
    wp = np.asarray(weights, dtype=np.float32)
    if wp.shape != inside.shape:
        raise ValueError(f"weights {wp.shape} must have the shape of mask {inside.shape}")
    wp = np.where(inside, np.abs(wp), np.float32(0))
    mean = float(wp[inside].mean()) if np.any(inside) else 0.0
    return box.embed(wp / np.float32(mean if mean > 0 else 1.0)) ** 2


def _finish(chi_padded: np.ndarray, mask: np.ndarray, box: _Box) -> np.ndarray:
    """Back to the input grid, zero outside ``mask``, float32."""
    chi = box.extract(np.asarray(chi_padded, dtype=np.float32))
    return np.where(np.asarray(mask).astype(bool), chi, np.float32(0)).astype(np.float32)


def _grad_scale(voxel_size: Sequence[float]) -> np.ndarray:
    """Finite-difference step per axis in units of the geometric-mean voxel size.

    Gradients are taken per "mean voxel", so regularisation weights keep their meaning
    across resolutions for piecewise-constant maps while anisotropy is still respected.
    """
    v = np.asarray(voxel_size, dtype=np.float64)
    if v.shape != (3,) or np.any(v <= 0):
        raise ValueError(f"voxel_size must be 3 positive floats, got {voxel_size}")
    return v / np.exp(np.log(v).mean())


def _grad_symbol_sq(shape: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """``|G(k)|^2`` of the periodic forward-difference gradient (rfftn layout, float32):
    minus the discrete Laplacian's symbol, with steps in geometric-mean voxels."""
    return -laplacian_kernel(shape, _grad_scale(voxel_size), real=True)


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
    f, _, shape, sl = _prepare(local_field, mask)
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)
    t = np.float32(threshold)
    # Wharton 2010, eq. 4: truncated inverse kernel, sign(D)/delta in the ill-conditioned cone
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(d) >= t, np.float32(1) / d, np.sign(d) / t).astype(np.float32)
    chi = irfftn(rfftn(f) * inv, s=shape)
    return _finish(chi, mask, sl)
