"""Regularisation weight chosen from the data: the field's inconsistency on the dipole cone.

A local field that the scalar dipole model explained exactly would carry no signal where
the dipole kernel vanishes: ``f(k) = D(k) chi(k)`` is zero on the cone
``(k.b0)^2 = |k|^2 / 3``. Whatever the field holds there is what no susceptibility map
can explain: thermal noise, and on real brains much more, the part of the field that
tissue anisotropy and microstructure (white-matter fibres, Wharton and Bowtell, PNAS
2012), imperfect background removal and phase-processing errors add. Dividing by ``D``
near the cone turns exactly that part into the streaks of unregularised inversions, so it
is the error level against which the data term must be balanced.

:func:`cone_inconsistency` measures it: the RMS amplitude per voxel that the field's
spectrum has on the cone, ``sigma = sqrt(mean_cone |F(k)|^2 / sum w^2)`` for the field
times a window ``w`` that goes smoothly to zero at the mask's edge (Parseval: white
noise of SD ``sigma`` has exactly that expected power at every ``k``). Only mid and high
spatial frequencies enter, and the window keeps the mask edge from spreading the large
off-cone power of a consistent field onto the cone (on the 2016 challenge brain the
dipole field of chi_33 scores 0.0012 ppm on this measure, the measured field 0.0069).

Why not the echo fit's noise map alone (the discrepancy principle on thermal noise)? On
the 2016 challenge brain the thermal noise of the field is about 0.003 ppm (Donoho's
wavelet estimate), while the field differs from the dipole field of the 12-orientation
reference chi_33 by 0.0075 ppm RMS and by 0.0062 ppm from COSMOS: the field is mostly
*model* error, which thermal noise does not see. A weight balanced on thermal noise
under-regularises real brains; one balanced on the cone inconsistency does not, and on
data that obey the model (a simulation with only noise) it falls back to the noise
level.

:func:`automatic_lambda` makes the TV weight proportional to that level,
``lambda = lambda_per_sigma * sigma``: for an L1 penalty with a quadratic data term the
optimal weight scales with the error SD (the soft-threshold rule of Donoho and Johnstone,
Biometrika 1994), and the constant is a property of the prior and the data term, not of
one dataset. The constants of the inversions that use it, and the data they were checked
on, are in their docstrings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from qsm_bids.core.kernels import bounding_box, cone_spectrum

__all__ = ["automatic_lambda", "cone_inconsistency"]


def cone_inconsistency(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    cone_halfwidth: float = 0.05,
    k_band: tuple[float, float] = (0.3, 0.9),
    padding: float = 1.5,
    taper_mm: float = 5.0,
    weights: np.ndarray | None = None,
) -> float:
    """RMS field amplitude on the dipole kernel's zero cone (the field's own unit).

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field (ppm or Hz; the result has the same unit); only ``mask`` is used.
    mask : (X, Y, Z) array
        Where the field is defined (nonzero = inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    cone_halfwidth : float, default 0.05
        The cone is ``|D(k)| < cone_halfwidth`` (``D`` between -2/3 and 1/3); 0.02 and
        0.1 gave the same value within 2 % on the 2016 challenge field.
    k_band : (float, float), default (0.3, 0.9)
        Band of ``|k|`` used, as fractions of the Nyquist radius ``0.5 / max(voxel_size)``;
        below it the mask edge's leakage dominates, above it the corners of k-space.
    padding : float, default 1.5
        Zero-padding factor of the FFT grid (no wrap-around of the masked field).
    taper_mm : float, default 5.0
        Width of the window that takes the field smoothly to zero at the mask's edge,
        ``w = sin^2(pi/2 min(d / taper_mm, 1))`` with ``d`` the distance to the outside
        (mm): a hard edge would spread the large off-cone power of a consistent field onto
        the cone (by a third of the field's RMS on a 40 mm ball of rough susceptibility; a
        tenth with the window).
    weights : (X, Y, Z) array or None, default None
        Data weights of the inversion's data term (e.g. inverse field noise SD); with them
        the inconsistency is that of the weighted field ``W f`` (``|W|`` normalised to mean
        1 in the mask, as the inversions do), the error level the weighted data term sees:
        voxels the weights discount (a corrupted slab) then do not raise it.

    Returns
    -------
    float
        ``sqrt(mean over the cone band of |F(k)|^2 / sum(w^2))``, with ``F`` the spectrum
        of ``w`` times the field minus its ``w``-weighted mean; 0 for an empty mask.
    """
    f = np.asarray(field, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"field {f.shape} and mask {m.shape} must be equal 3D shapes")
    if not 0 < cone_halfwidth < 1 / 3 or not 0 <= k_band[0] < k_band[1]:
        raise ValueError("need 0 < cone_halfwidth < 1/3 and 0 <= k_band[0] < k_band[1]")
    if not m.any():
        return 0.0
    box = bounding_box(m, 1)
    mb = m[box]
    dist = ndimage.distance_transform_edt(mb, sampling=voxel_size)
    w = (np.sin(0.5 * np.pi * np.minimum(dist / max(taper_mm, 1e-6), 1.0)) ** 2).astype(np.float32)
    fb = f[box]
    if weights is not None:
        wd = np.abs(np.asarray(weights, dtype=np.float32))
        if wd.shape != m.shape:
            raise ValueError(f"weights {wd.shape} must have the shape of mask {m.shape}")
        wd = np.where(m, wd, np.float32(0))
        scale = float(wd[m].mean())
        w = w * (wd[box] / np.float32(scale if scale > 0 else 1.0))
    mean = float(np.sum(w * fb, dtype=np.float64) / np.sum(w, dtype=np.float64))
    shape = tuple(int(np.ceil(s * max(padding, 1.0))) for s in f.shape)
    x = np.zeros(shape, np.float32)
    x[tuple(slice(0, s) for s in mb.shape)] = w * (fb - np.float32(mean))
    n = float(np.sum(w.astype(np.float64) ** 2))
    power, d, radius = cone_spectrum(x, voxel_size, b0_dir)
    radius = radius * np.float32(2.0 * max(voxel_size))
    sel = (radius >= k_band[0]) & (radius < k_band[1]) & (np.abs(d) < cone_halfwidth)
    if not sel.any():
        raise ValueError("the cone band holds no k-space sample: grid too small")
    return float(np.sqrt(power[sel].mean(dtype=np.float64) / n))


def automatic_lambda(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    lambda_per_sigma: float,
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """TV weight ``lambda_per_sigma * sigma`` from the field's cone inconsistency ``sigma``.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir, weights
        As :func:`cone_inconsistency`.
    lambda_per_sigma : float
        Weight per unit of inconsistency (dimensionless; the inversion's own constant).

    Returns
    -------
    (lambda_, sigma) : tuple of float
        The weight and the inconsistency, both in the field's unit. Raises ``ValueError``
        when the field has no inconsistency at all (a field made exactly by the model with
        no noise: no weight can be derived from it).
    """
    if lambda_per_sigma <= 0:
        raise ValueError(f"lambda_per_sigma must be > 0, got {lambda_per_sigma}")
    sigma = cone_inconsistency(field, mask, voxel_size, b0_dir, weights=weights)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError("the field has no content on the dipole cone: set lambda_ explicitly")
    return float(lambda_per_sigma * sigma), sigma
