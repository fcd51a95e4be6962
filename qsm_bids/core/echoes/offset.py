"""Phase-offset (phase at TE = 0) estimation for multi-echo GRE: MCPC-3D-S.

The phase of echo ``n`` is modelled as ``phase_n = phase0 + 2*pi*f*TE_n``: ``phase0`` is the
(transmit / receive) phase offset at TE = 0, smooth in space, and ``f`` the field in Hz. A
fit through the origin needs ``phase0`` removed first; MCPC-3D-S estimates it from the first
two echoes and smooths it.

Reference
---------
Eckstein K, Dymerska B, Bachrata B, Bogner W, Poljanc K, Trattnig S, Robinson SD.
Computationally efficient combination of multi-channel phase data from multi-echo
acquisitions (ASPIRE). Magn Reson Med 2018;79:2996-3006 (MCPC-3D-S, section "MCPC-3D-S").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsm_bids.core import kernels

__all__ = ["gaussian_smooth_normalised", "mcpc3ds_offset", "polynomial_trend"]


def _block_sum(x: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Sum over non-overlapping blocks of ``factors`` voxels (zero-padded at the far end)."""
    pads = [(0, (-n) % f) for n, f in zip(x.shape, factors, strict=True)]
    if any(p[1] for p in pads):
        x = np.pad(x, pads)
    n0, n1, n2 = (n // f for n, f in zip(x.shape, factors, strict=True))
    f0, f1, f2 = factors
    return x.reshape(n0, f0, n1, f1, n2, f2).sum(axis=(1, 3, 5), dtype=np.float32)


def _upsample_linear(x: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation from block centres back to the fine grid."""
    out = x
    for axis, (f, n) in enumerate(zip(factors, shape, strict=True)):
        if f == 1:
            continue
        pos = (np.arange(n, dtype=np.float64) + 0.5) / f - 0.5  # coarse index of fine voxel
        pos = np.clip(pos, 0.0, out.shape[axis] - 1.0)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, out.shape[axis] - 1)
        t = (pos - i0).astype(np.float32)
        bshape = [1, 1, 1]
        bshape[axis] = n
        t = t.reshape(bshape)
        out = out.take(i0, axis=axis) * (np.float32(1.0) - t) + out.take(i1, axis=axis) * t
    return out.astype(np.float32, copy=False)


def gaussian_smooth_normalised(
    values: Sequence[np.ndarray],
    weight: np.ndarray,
    voxel_size: Sequence[float],
    sigma_mm: Sequence[float],
    *,
    downsample: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Normalised convolution of several 3D arrays with one Gaussian and one weight map.

    Each output is ``G * (weight * value) / (G * weight)``: a weighted local mean in which
    voxels of weight 0 (outside the mask) take no part, so values near the mask edge are not
    pulled toward 0. The Gaussian is applied in k-space (its exact transfer function
    ``exp(-2 pi^2 sum_k sigma_k^2 k_k^2)``) on a zero-padded grid (>= 3 sigma each side), so
    nothing wraps around.

    Parameters
    ----------
    values : sequence of 3D arrays
        Arrays to smooth, all of ``weight``'s shape.
    weight : 3D array
        Non-negative weights (0 outside the region of support).
    voxel_size : 3 floats
        Voxel size in mm.
    sigma_mm : 3 floats
        Standard deviation of the Gaussian along each array axis, in mm.
    downsample : bool, default True
        Where sigma spans >= 4 voxels along an axis, work on a grid coarsened by
        ``floor(sigma / (2 voxel))`` (at most 4) along it: weighted block sums, the Gaussian
        (its variance reduced by the block's ``(f voxel)^2 / 12``), then linear interpolation
        back. Several times faster; the difference is far below the smoothing scale.

    Returns
    -------
    smoothed : list of float32 arrays
        The normalised smooth of each input (0 where the smoothed weight is ~0).
    weight_smooth : float32 array
        ``G * weight``, the local weight density per fine voxel (a confidence map).
    """
    w = np.asarray(weight, dtype=np.float32)
    shape = w.shape
    vox = np.asarray(voxel_size, dtype=np.float64)
    sig = np.asarray(sigma_mm, dtype=np.float64)
    factors = [1, 1, 1]
    if downsample:
        factors = [
            int(min(4, max(1, np.floor(s / (2.0 * v))))) for s, v in zip(sig, vox, strict=True)
        ]
    fvec = np.asarray(factors, dtype=np.float64)
    cvox = vox * fvec
    # the block average already smooths with variance (f voxel)^2 / 12
    csig = np.sqrt(np.maximum(sig**2 - np.where(fvec > 1, cvox**2 / 12.0, 0.0), 0.0))

    def down(x: np.ndarray) -> np.ndarray:
        return x if factors == [1, 1, 1] else _block_sum(x, factors)

    wc = down(w)
    cshape = wc.shape
    pad = np.ceil(3.0 * csig / cvox).astype(int)
    target = kernels.fast_shape(cshape, pad)
    k0, k1, k2 = kernels.kspace_grid(target, cvox, real=True)
    # transfer function of a unit-area Gaussian, built once
    g = np.exp(
        np.float32(-2.0 * np.pi**2)
        * (
            np.float32(csig[0] ** 2) * k0**2
            + np.float32(csig[1] ** 2) * k1**2
            + np.float32(csig[2] ** 2) * k2**2
        )
    ).astype(np.float32)

    def smooth(x: np.ndarray) -> np.ndarray:
        padded, sl = kernels.pad_to(x.astype(np.float32, copy=False), target)
        return kernels.irfftn(g * kernels.rfftn(padded), s=target)[sl].astype(np.float32)

    den = smooth(wc)
    tiny = np.float32(1e-6) * max(float(den.max()), np.finfo(np.float32).tiny)
    ok = den > tiny
    inv = np.zeros_like(den)
    inv[ok] = 1.0 / den[ok]
    out = []
    for v in values:
        sm = smooth(down(w * np.asarray(v, dtype=np.float32))) * inv
        out.append(sm if factors == [1, 1, 1] else _upsample_linear(sm, factors, shape))
    if factors != [1, 1, 1]:
        den = _upsample_linear(den, factors, shape) / np.float32(np.prod(fvec))
    return out, den


def polynomial_trend(
    values: np.ndarray,
    weight: np.ndarray,
    voxel_size: Sequence[float],
    order: int,
    *,
    max_samples: int = 50_000,
) -> np.ndarray:
    """Weighted least-squares fit of a 3D polynomial of total degree ``order`` to ``values``.

    Parameters
    ----------
    values : 3D float array
        Data to fit (e.g. an unwrapped phase in rad).
    weight : 3D float array
        Non-negative weights; voxels of weight 0 are ignored.
    voxel_size : 3 floats
        Voxel size in mm (the fit is isotropic in physical space).
    order : int
        Total polynomial degree (0: weighted mean, 1: plane, 2: quadric, ...). Negative:
        return zeros.
    max_samples : int, default 50000
        At most this many voxels (a fixed random subsample of the weighted ones) enter the fit.

    Returns
    -------
    float32 array of ``values``' shape: the fitted polynomial evaluated everywhere
    (zeros if ``order < 0`` or no voxel has weight).
    """
    shape = values.shape
    if order < 0:
        return np.zeros(shape, np.float32)
    idx = np.flatnonzero(np.asarray(weight) > 0)
    if idx.size == 0:
        return np.zeros(shape, np.float32)
    if idx.size > max_samples:
        # a fixed pseudo-random subsample (a regular stride could alias with the grid)
        idx = np.sort(np.random.default_rng(0).choice(idx, size=max_samples, replace=False))
    # physical coordinates centred and scaled to about [-1, 1] (conditioning)
    axes = [
        (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * float(d)
        for n, d in zip(shape, voxel_size, strict=True)
    ]
    half = max(float(np.abs(a).max()) for a in axes) or 1.0
    axes = [a / half for a in axes]
    powers = [
        (i, j, k)
        for i in range(order + 1)
        for j in range(order + 1 - i)
        for k in range(order + 1 - i - j)
    ]
    sub = np.unravel_index(idx, shape)
    cols = [
        axes[0][sub[0]] ** i * axes[1][sub[1]] ** j * axes[2][sub[2]] ** k for i, j, k in powers
    ]
    a = np.stack(cols, axis=1)
    w = np.sqrt(np.asarray(weight).ravel()[idx].astype(np.float64))
    b = np.asarray(values).ravel()[idx].astype(np.float64)
    coef, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
    # separable evaluation: sum_i x^i * (sum_j y^j * (sum_k c_ijk z^k))
    cz = {}
    for c, (i, j, k) in zip(coef, powers, strict=True):
        cz.setdefault((i, j), np.zeros(order + 1))[k] = c
    out = np.zeros(shape, np.float32)
    for i in range(order + 1):
        q = np.zeros(shape[1:], np.float64)
        for j in range(order + 1 - i):
            if (i, j) in cz:
                pz = np.polynomial.polynomial.polyval(axes[2], cz[(i, j)])
                q += (axes[1] ** j)[:, None] * pz[None, :]
        out += (axes[0] ** i).astype(np.float32)[:, None, None] * q.astype(np.float32)[None]
    return out


def mcpc3ds_offset(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: Sequence[float],
    voxel_size: Sequence[float],
    *,
    sigma_mm: tuple[float, float, float] = (5.0, 5.0, 5.0),
    detrend_order: int = 3,
) -> np.ndarray:
    """Smoothed phase offset at TE = 0 by MCPC-3D-S (Eckstein et al., MRM 2018).

    Parameters
    ----------
    phase : (X, Y, Z, E) float array
        Phase in rad, already unwrapped in space and consistent across echoes (E >= 2).
    magnitude : (X, Y, Z, E) float array or None
        Magnitude (any scale); the first echo's magnitude weights the smoothing. ``None``:
        equal weights inside the mask.
    mask : (X, Y, Z) bool array
        Region whose voxels enter the smoothing (others get weight 0).
    echo_times : E floats
        Echo times in s; the first two must differ.
    voxel_size : 3 floats
        Voxel size in mm.
    sigma_mm : 3 floats, default (5.0, 5.0, 5.0)
        Standard deviation (mm) of the Gaussian smoothing of the offset along each axis.
        MCPC-3D-S's usual [10, 10, 5] voxels is about this at 0.5 x 0.5 x 1 mm.
    detrend_order : int, default 3
        Degree of a weighted polynomial fitted to the unwrapped offset and removed before
        the smoothing, then added back (-1: none). A Gaussian smooth truncated by the mask
        edge is biased by the local gradient of what it smooths; removing the large-scale
        trend first makes that bias negligible. It also fixes the 2*pi branch of the result.

    Returns
    -------
    (X, Y, Z) float32 array
        Smoothed phase offset ``phase0`` in rad, on the same 2*pi branch as the (unwrapped)
        input; subtract it from every echo. Values outside ``mask`` are extrapolated by the
        normalised convolution (0 far from the mask, apart from the trend).

    Notes
    -----
    1. Unsmoothed offset from echoes 1 and 2 (the MCPC-3D-S step of the paper):
       ``phase0 = phase_1 - TE_1 * (phase_2 - phase_1) / (TE_2 - TE_1)``. The paper takes
       the Hermitian product and unwraps the echo difference; the input is unwrapped here.
    2. (Addition, see ``detrend_order``) a smooth polynomial trend ``p`` of ``phase0``.
    3. Smoothing of the complex ``m_1 * exp(i (phase0 - p))`` inside the mask by normalised
       convolution (robust to outlier and 2*pi-jumping voxels, unbiased at the mask edge by
       a constant).
    4. ``phase0_smooth = p + angle(smoothed complex)``; without detrending the angle is
       moved to the 2*pi branch of a real-valued smooth of the unwrapped ``phase0`` so that
       subtracting it from the unwrapped echoes leaves no 2*pi jumps.
    """
    ph = np.asarray(phase, dtype=np.float32)
    if ph.ndim != 4 or ph.shape[-1] < 2:
        raise ValueError(f"MCPC-3D-S needs phase of shape (X, Y, Z, E>=2); got {ph.shape}")
    te = np.asarray(echo_times, dtype=np.float64)
    if te.size != ph.shape[-1]:
        raise ValueError(f"{te.size} echo times for {ph.shape[-1]} echoes")
    dte = float(te[1] - te[0])
    if dte == 0.0:
        raise ValueError("MCPC-3D-S needs TE1 != TE2")
    m = np.asarray(mask, dtype=bool)

    # Step 1: raw phase offset from the first two echoes (linear extrapolation to TE = 0)
    ratio = np.float32(te[0] / dte)
    p1 = ph[..., 0]
    p0_raw = p1 - ratio * (ph[..., 1] - p1)

    # weights: first-echo magnitude inside the mask
    if magnitude is None:
        w = m.astype(np.float32)
    else:
        mag1 = np.abs(np.asarray(magnitude, dtype=np.float32)[..., 0])
        scale = float(mag1[m].max()) if m.any() else 0.0
        w = np.where(m, mag1 / np.float32(scale if scale > 0 else 1.0), np.float32(0.0))
        w = w.astype(np.float32, copy=False)

    # Step 2: large-scale trend
    trend = polynomial_trend(p0_raw, w, voxel_size, detrend_order)
    rest = p0_raw - trend

    # Step 3: normalised complex smoothing of what is left
    values = [np.cos(rest), np.sin(rest)]
    if detrend_order < 0:
        values.append(rest)  # real-valued smooth, for the 2*pi branch only
    smoothed, _ = gaussian_smooth_normalised(values, w, voxel_size, sigma_mm)

    # Step 4: angle of the smoothed complex, on the branch of the unwrapped offset
    p0 = np.arctan2(smoothed[1], smoothed[0]).astype(np.float32)
    if detrend_order < 0:
        two_pi = np.float32(2.0 * np.pi)
        p0 += two_pi * np.round((smoothed[2] - p0) / two_pi)
    return (p0 + trend).astype(np.float32, copy=False)
