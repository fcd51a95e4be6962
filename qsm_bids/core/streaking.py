"""A no-reference measure of streaking along the dipole kernel's zero cone.

Why the cone
------------
The field is the susceptibility convolved with the dipole kernel,
``F(field)(k) = D(k) F(chi)(k)`` with ``D(k) = 1/3 - (k.b)^2 / |k|^2`` (``b`` the unit B0
direction). ``D`` vanishes on the double cone at the magic angle (54.7 degrees to B0), so
every inversion divides by a small number there: noise, background-field remnants and
model errors (non-dipolar phase, anisotropy) are amplified into k-space energy concentrated
on the cone, which appears in the image as streaks through strong sources along the
cone's directions. Li W et al. (NeuroImage 2015;108:111-122,
doi:10.1016/j.neuroimage.2014.12.043, iLSQR) model these streaking artefacts as arising
from the ill-conditioned k-space region only and estimate and subtract them there; the QSM
reconstruction challenge 2.0 (Bilgic B et al., MRM 2021;86:1241-1255,
doi:10.1002/mrm.28754) scores streaking around a calcification as one of its failure
modes (its "calcification streaking" metric is in :mod:`qsm_bids.core.metrics`, but needs
the truth).

The index
---------
:func:`streaking_index` compares, at each spatial frequency, the power of the map on the
cone with the power off it: a map whose power spectrum is isotropic scores about 1, a map
with streaks along the cone scores above 1, and a map whose cone was over-suppressed (TSVD,
strong regularisation of the ill-conditioned region) scores below 1. It needs no reference,
so it can be computed for any map, the truth included.

Caveats: real tissue is not isotropic (white-matter susceptibility anisotropy, oriented
vessels and cortex, the mask's own shape), so even a perfect map differs from 1; the index
is meant for comparing maps of the same data (recipes, parameters, subjects of one
protocol) and for flagging large values, not as an absolute scale. It is blind to streaks
that are not along the cone of ``b0_dir`` (a wrong B0 direction sees nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qsm_bids.core.kernels import bounding_box, cone_spectrum, fast_shape, pad_to

__all__ = ["STREAKING_FLAG", "streaking_index"]

#: Index above which a map is flagged as streaky (report, evaluate). Measured on the
#: built-in head phantom (true local field + white field noise of 0-0.01 ppm; 2-4 mm):
#: the true map scores 0.90-0.97; regularised maps 0.2-0.8 (Tikhonov 0.20-0.37, TV-ADMM
#: 0.55-0.77, TKD with its default threshold 0.19 0.32-0.78); TKD with the small
#: thresholds 0.05 and 0.02, visibly streaky, 1.3-4.3 and 2.1-8.1; TV-ADMM with its
#: default weight on the noisiest field (under-regularised) 1.5-2.1. On the real brain of
#: the 2016 challenge (benchmarks/RESULTS.md) both references score 0.89-0.91, MEDI with
#: lambda 500, whose streaks are plain to see, 1.36, TV-ADMM at 5e-5 2.10, NDI 1.87 and
#: the default 0.47: 1.25, a third more power on the cone than the references have, flags
#: the streaky real maps and no true or regularised one.
STREAKING_FLAG = 1.25


def streaking_index(
    chi: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    cone_halfwidth: float = 0.1,
    k_band: tuple[float, float] = (0.15, 0.85),
    n_shells: int = 8,
    pad_factor: float = 1.5,
) -> float:
    """Ratio of the map's k-space power on the dipole cone to the power off it.

    Steps: (1) ``chi`` minus its mean inside ``mask``, zero outside, cut to the mask's
    bounding box and zero-padded to at least ``pad_factor`` times its size (no wrap-around
    of the periodic FFT); (2) one real FFT, the power ``|X(k)|^2``; (3) the unit dipole
    kernel ``D(k)`` (:func:`qsm_bids.core.kernels.dipole_kernel`, ``k`` from
    ``fftfreq(n, d=voxel_mm)``); (4) the frequencies with ``k_band[0] * k_N <= |k| <
    k_band[1] * k_N`` are kept, where ``k_N = 1 / (2 max(voxel_size))`` is the radius of
    the largest sphere inside the sampled k-space (the Nyquist radius for isotropic
    voxels): this drops the lowest frequencies, where the mask's shape dominates, and the
    corners of k-space; (5) the band is split into ``n_shells`` shells of equal width in
    ``|k|``; in each shell, the ratio of the mean power over the cone ``|D(k)| <
    cone_halfwidth`` to the mean power over the rest of the shell; (6) the index is the
    geometric mean of the shell ratios, so every frequency band counts equally, whatever
    its power.

    With the default half-width 0.1 the cone is the directions 48.9 to 61.1 degrees from
    B0 (and their mirror), 17.5 % of each shell.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility (ppm; any unit or offset: the index is invariant to both).
    mask : (X, Y, Z) array
        Region of the map to analyse (non-zero inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space (:func:`qsm_bids.core.kernels.b0_direction`).
    cone_halfwidth : float, default 0.1
        The cone is where ``|D(k)| < cone_halfwidth`` (0 < value < 1/3).
    k_band : (float, float), default (0.15, 0.85)
        Radii of the analysed band, as fractions of ``k_N`` (0 <= low < high <= 1).
    n_shells : int, default 8
        Number of radial shells in the band.
    pad_factor : float, default 1.5
        Zero padding of the bounding box before the FFT (>= 1).

    Returns
    -------
    float
        The index (dimensionless, >= 0): ~1 isotropic, > 1 streaking along the cone,
        < 1 cone suppressed; 0 when a shell's cone carries no power, ``inf`` when only
        the cone does; ``nan`` when the map is constant inside the mask.

    Raises
    ------
    ValueError
        Shapes differ, the mask has fewer than 2 voxels, or a parameter is out of range.
    """
    x = np.asarray(chi, dtype=np.float32)
    m = np.asarray(mask) != 0
    if x.ndim != 3 or x.shape != m.shape:
        raise ValueError(f"chi {x.shape} and mask {m.shape} must be equal 3D shapes")
    vox = tuple(float(v) for v in voxel_size)
    if len(vox) != 3 or min(vox) <= 0:
        raise ValueError(f"voxel_size must be 3 positive numbers, got {voxel_size}")
    b = np.asarray(b0_dir, dtype=np.float64)
    if b.shape != (3,) or not np.linalg.norm(b) > 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {b0_dir}")
    if not 0.0 < cone_halfwidth < 1.0 / 3.0:
        raise ValueError(f"cone_halfwidth must be in (0, 1/3), got {cone_halfwidth}")
    lo, hi = (float(v) for v in k_band)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"k_band must satisfy 0 <= low < high <= 1, got {k_band}")
    if int(n_shells) < 1 or pad_factor < 1.0:
        raise ValueError("n_shells must be >= 1 and pad_factor >= 1")
    n_shells = int(n_shells)
    if int(m.sum()) < 2:
        raise ValueError("the mask needs at least 2 voxels")

    box = bounding_box(m)
    inside = m[box]
    values = x[box]
    mean = float(values[inside].mean(dtype=np.float64))
    local = np.where(inside, values - np.float32(mean), np.float32(0))
    shape = fast_shape([math.ceil(n * pad_factor) for n in local.shape], complex_radices=False)
    padded, _ = pad_to(local, shape)
    power, dipole, radius = cone_spectrum(padded, vox, b)
    del padded
    cone = np.abs(dipole) < np.float32(cone_halfwidth)
    k_nyquist = 0.5 / max(vox)
    edges = np.linspace(lo * k_nyquist, hi * k_nyquist, n_shells + 1)
    shell = np.searchsorted(edges, radius, side="right").astype(np.int16) - 1
    keep = (shell >= 0) & (shell < n_shells)
    bins = shell[keep].astype(np.intp) + n_shells * cone[keep]
    sums = np.bincount(bins, weights=power[keep], minlength=2 * n_shells)
    counts = np.bincount(bins, minlength=2 * n_shells)
    with np.errstate(divide="ignore", invalid="ignore"):
        off_mean = sums[:n_shells] / counts[:n_shells]
        on_mean = sums[n_shells:] / counts[n_shells:]
    usable = (counts[:n_shells] > 0) & (counts[n_shells:] > 0)
    if not usable.any():
        raise ValueError("no shell of the band holds both cone and off-cone frequencies")
    usable &= (on_mean > 0) | (off_mean > 0)  # a shell without any power says nothing
    if not usable.any():
        return float("nan")  # a constant map
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratios = np.log(on_mean[usable]) - np.log(off_mean[usable])
        return float(np.exp(np.mean(log_ratios)))
