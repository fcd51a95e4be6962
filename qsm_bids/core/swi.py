"""Susceptibility-weighted imaging (SWI) and minimum-intensity projection (minIP).

CLEAR-SWI style (Eckstein K, Bachrata B, Hangel G, et al. "Improved susceptibility weighted
imaging at ultra-high field using bipolar multi-echo acquisition and optimized image
processing: CLEAR-SWI", NeuroImage 2021;237:118175): the echoes' magnitudes are combined with
echo-time weighting, the phase information enters as the background-free local field (Hz,
the multi-echo combination and high-pass filtering done by the field stage), a phase mask
built from it attenuates paramagnetic voxels, and the masked magnitude is projected to its
minimum over a thin slab.

Sign convention (this project's): a paramagnetic vein has positive susceptibility and, for
the dipole kernel ``1/3 - kz^2/k^2``, a positive local field (Hz) inside it (along B0 and
where it is largest). The phase mask therefore attenuates positive local field values.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "combine_magnitude",
    "phase_mask",
    "swi",
    "minimum_intensity_projection",
    "slab_voxels",
]


def combine_magnitude(magnitude: np.ndarray, echo_times_s: np.ndarray) -> np.ndarray:
    """Combine the echoes' magnitudes, echo-time weighted (CLEAR-SWI's "SNR" weighting).

    ``m = sqrt(sum_n (m_n * TE_n)^2) / sqrt(sum_n TE_n^2)``: the root-sum-of-squares of the
    magnitudes weighted by echo time, which raises the T2*-contrast of the later echoes while
    keeping the SNR of the early ones; for a T2*-free signal it returns the magnitude itself.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude of each echo (arbitrary units, >= 0).
    echo_times_s : ndarray, shape (E,)
        Echo times (s), > 0.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Combined magnitude (the units of ``magnitude``).
    """
    mag = np.asarray(magnitude, dtype=np.float32)  # the echo stack: no float64 copy
    te = np.asarray(echo_times_s, dtype=np.float32).ravel()
    if mag.ndim != 4 or mag.shape[-1] != te.size:
        raise ValueError(f"magnitude {mag.shape} must be 4D with one volume per echo ({te.size})")
    if np.any(te <= 0):
        raise ValueError("echo times must be positive")
    num = np.sqrt(np.sum(np.square(mag * te), axis=-1, dtype=np.float32))
    return (num / np.float32(np.sqrt(np.sum(np.square(te))))).astype(np.float32, copy=False)


def phase_mask(
    local_field_hz: np.ndarray,
    echo_time_s: float,
    *,
    power: float = 4.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Phase mask that attenuates paramagnetic (positive local field) voxels.

    The local field is turned into the phase it makes at ``echo_time_s``,
    ``phi = 2 pi f TE`` (rad), and the classic negative phase mask of Haacke et al. (2004)
    used by CLEAR-SWI is applied: ``w = 1 - phi / pi`` for ``0 < phi < pi``, ``0`` for
    ``phi >= pi``, ``1`` for ``phi <= 0``; the mask is ``w ** power``.

    Parameters
    ----------
    local_field_hz : ndarray, shape (X, Y, Z)
        Background-free local field (Hz), positive for a paramagnetic vein (this project's
        convention, after the phase-sign check).
    echo_time_s : float
        Echo time (s) at which the field is turned into phase; CLEAR-SWI scales its combined
        phase like this, and a longer TE makes a stronger mask.
    power : float, default 4
        Exponent of the mask (4 as in classic SWI and CLEAR-SWI's default strength).
    mask : ndarray of bool, optional
        Where the field is defined; outside, the mask is 1 (no attenuation).

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Multiplicative mask in [0, 1].
    """
    if echo_time_s <= 0:
        raise ValueError("echo_time_s must be positive")
    if power <= 0:
        raise ValueError("power must be positive")
    f = np.nan_to_num(np.asarray(local_field_hz, dtype=np.float32))
    # 1 - phi / pi with phi = 2 pi f TE
    w = np.clip(np.float32(1.0) - np.float32(2.0 * float(echo_time_s)) * f, 0.0, 1.0)
    if mask is not None:
        w = np.where(np.asarray(mask, dtype=bool), w, np.float32(1.0))
    return (w ** np.float32(power)).astype(np.float32, copy=False)


def swi(
    magnitude: np.ndarray,
    echo_times_s: np.ndarray,
    local_field_hz: np.ndarray,
    *,
    power: float = 4.0,
    echo_time_s: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """SWI: echo-combined magnitude times the phase mask.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude of each echo (arbitrary units).
    echo_times_s : ndarray, shape (E,)
        Echo times (s).
    local_field_hz : ndarray, shape (X, Y, Z)
        Local field (Hz), positive in paramagnetic veins.
    power : float, default 4
        Phase-mask exponent (:func:`phase_mask`).
    echo_time_s : float, optional
        Echo time (s) that scales the field into phase; None: the mean echo time.
    mask : ndarray of bool, optional
        Where the field is defined (the brain); outside, the magnitude is kept.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        SWI (the units of ``magnitude``).
    """
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    comb = combine_magnitude(magnitude, te)
    tref = float(np.mean(te)) if echo_time_s is None else float(echo_time_s)
    return (comb * phase_mask(local_field_hz, tref, power=power, mask=mask)).astype(np.float32)


def slab_voxels(slab_mm: float, voxel_size_mm: float) -> int:
    """Number of slices in a slab of ``slab_mm`` (mm) at ``voxel_size_mm`` (mm), >= 1."""
    if slab_mm <= 0 or voxel_size_mm <= 0:
        raise ValueError("slab thickness and voxel size must be positive")
    return max(1, int(round(slab_mm / voxel_size_mm)))


def minimum_intensity_projection(volume: np.ndarray, slab: int, axis: int = 2) -> np.ndarray:
    """Sliding-slab minimum-intensity projection along ``axis``.

    Each output slice ``k`` is the minimum over the ``slab`` input slices centred on ``k``
    (``k - slab // 2`` to ``k - slab // 2 + slab - 1``, cut at the volume's edges), so the
    output has the input's grid and can be written beside it.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Image (e.g. the SWI, arbitrary units); NaN voxels are ignored.
    slab : int
        Slab thickness in slices (>= 1; :func:`slab_voxels` converts from mm).
    axis : int, default 2
        Projection axis (the slice axis closest to B0).

    Returns
    -------
    ndarray, the shape of ``volume``, float32
        minIP.
    """
    if slab < 1:
        raise ValueError("slab must be >= 1 slice")
    v = np.moveaxis(np.asarray(volume, dtype=np.float32), axis, -1)
    v = np.where(np.isfinite(v), v, np.inf)
    # the window of slice k covers k - slab // 2 ... k - slab // 2 + slab - 1; "nearest"
    # padding repeats the edge slice, which leaves the minimum of the shortened window
    out = ndimage.minimum_filter1d(v, size=int(slab), axis=-1, mode="nearest")
    out[~np.isfinite(out)] = np.nan
    return np.moveaxis(out, -1, axis)
