"""Multi-echo unwrapping: spatial unwrapping of echo 1 and of the echo difference, then
temporal unwrapping of the later echoes against a per-voxel linear prediction.

The phase of echo n is modelled as ``phase0 + 2*pi*f*TE_n`` with a smooth, possibly large
offset ``phase0`` (so phase is *not* assumed proportional to TE). Strategy (after the
template/temporal approach of ROMEO, Dymerska et al. MRM 2021, and the echo-difference idea of
MCPC-3D-S, Eckstein et al. MRM 2018):

1. Spatially unwrap echo 1 -> ``u_1``.
2. Spatially unwrap the echo-difference phase ``angle(z_2 conj(z_1)) = 2*pi*f*(TE_2 - TE_1)``
   (no ``phase0``) -> ``D``. Its global ``2*pi*k`` per mask component is fixed by assuming
   the mean frequency in the object is near 0 (the scanner adjusts its centre frequency on
   the object), i.e. the mean of ``D`` is moved into [-pi, pi).
3. ``u_1``'s global ``2*pi*k`` per component is chosen so that the mean of
   ``phase0 = u_1 - D * TE_1 / (TE_2 - TE_1)`` lies in [-pi, pi).
4. (strategy "template", the default) ``phase0`` is smooth, so a robust smooth estimate of it
   (magnitude-weighted local circular mean, recomputed without the outliers that local
   unwrapping errors of ``u_1`` or ``D`` leave) turns the *template* -- whichever of echo 1
   and the echo difference has the shorter time, i.e. the smaller phase gradients -- into a
   voxel-wise prediction of the other: for ``TE_1 <= TE_2 - TE_1``,
   ``D = dphi + 2*pi*round(((u_1 - phase0) (TE_2 - TE_1) / TE_1 - dphi) / (2*pi))``.
   Islands that the spatial unwrapping of the steeper volume got wrong (typically the echo
   difference next to air cavities at 7 T, where the field changes by more than half a
   cycle per voxel over ``TE_2 - TE_1``) are thereby corrected. Voxels where the smoothed
   ``phase0`` is incoherent (its local circular mean is short, e.g. around a phase
   singularity of a poor coil combination) keep their spatial unwrap.
5. Echo 2 is ``phi_2 + 2*pi*round((u_1 + D - phi_2) / (2*pi))`` (= ``u_1 + D`` exactly when
   both are congruent); every later echo n is unwrapped against the prediction of the
   weighted (``magnitude^2``) linear fit ``phase0 + omega*TE`` of the echoes already
   unwrapped: ``u_n = phi_n + 2*pi*round((pred_n - phi_n) / (2*pi))``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.ndimage

from qsm_bids.core.echoes.offset import gaussian_smooth_normalised
from qsm_bids.core.phase import wrap_to_pi

TWO_PI = np.float32(2.0 * np.pi)
#: "template": voxels whose smoothed phase0 has a lower coherence keep their spatial unwrap
MIN_PHASE0_COHERENCE = 0.5

#: spatial unwrapper: (wrapped 3D, magnitude 3D or None, echo-2 wrapped 3D or None,
#: TE1/TE2) -> unwrapped 3D float32 (rad)
SpatialUnwrapper = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, float], np.ndarray]


def temporal_unwrap(phase: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The member of ``phase + 2*pi*k`` nearest to ``prediction`` (both rad, float32).

    Returns ``phase + 2*pi*round((prediction - phase) / (2*pi))``.
    """
    p = np.asarray(phase, dtype=np.float32)
    k = np.rint((np.asarray(prediction, dtype=np.float32) - p) / TWO_PI)
    return (p + TWO_PI * k).astype(np.float32)


def weighted_linear_fit(
    values: np.ndarray, times: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel weighted least-squares line ``values = intercept + slope * t``.

    Parameters
    ----------
    values : (..., n) array
        Unwrapped phase (rad) at ``n >= 2`` time points.
    times : (n,) array
        Echo times (s).
    weights : (..., n) array or None, default None
        Non-negative weights (e.g. magnitude^2); None: equal weights.

    Returns
    -------
    intercept (rad), slope (rad/s): float32 arrays of shape ``values.shape[:-1]``. Voxels whose
    weights make the fit singular fall back to equal weights.
    """
    t = [np.float32(v) for v in np.asarray(times, dtype=np.float64).ravel()]
    y = np.asarray(values, dtype=np.float32)
    if y.shape[-1] != len(t):
        raise ValueError(f"{y.shape[-1]} values per voxel for {len(t)} times")
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    # accumulate the normal equations echo by echo (faster than reductions over a short axis)
    sw = np.zeros(y.shape[:-1], np.float32)
    swt = np.zeros_like(sw)
    swtt = np.zeros_like(sw)
    swy = np.zeros_like(sw)
    swty = np.zeros_like(sw)
    for n, tn in enumerate(t):
        wn = np.ones_like(sw) if w is None else w[..., n]
        wy = wn * y[..., n]
        sw += wn
        swt += wn * tn
        swtt += wn * (tn * tn)
        swy += wy
        swty += wy * tn
    det = sw * swtt - swt * swt
    # equal-weight fallback where the weighted normal equations are (nearly) singular
    t_arr = np.asarray(t, dtype=np.float32)
    n_t = np.float32(len(t))
    det_eq = n_t * (t_arr * t_arr).sum() - t_arr.sum() ** 2
    bad = ~(det > np.float32(1e-6) * det_eq * (sw / n_t) ** 2) | ~(sw > 0)
    if np.any(bad):
        sw = np.where(bad, n_t, sw)
        swt = np.where(bad, t_arr.sum(), swt)
        swtt = np.where(bad, (t_arr * t_arr).sum(), swtt)
        swy = np.where(bad, y.sum(-1), swy)
        swty = np.where(bad, (y * t_arr).sum(-1), swty)
        det = np.where(bad, det_eq, det)
    slope = (sw * swty - swt * swy) / det
    intercept = (swy - slope * swt) / sw
    return intercept.astype(np.float32), slope.astype(np.float32)


def robust_smooth_phase(
    phase: np.ndarray,
    weight: np.ndarray,
    voxel_size: tuple[float, float, float],
    *,
    sigma_mm: float = 5.0,
    outlier_rad: float = 0.5 * np.pi,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth estimate of a smooth phase map that is corrupted by sparse 2*pi*k-type errors.

    A magnitude-weighted local circular mean (Gaussian normalised convolution of
    ``weight * exp(i phase)``), computed twice: the second pass leaves out the voxels whose
    phase differs from the first estimate by more than ``outlier_rad``. A minority of wrong
    voxels does not move a circular mean whose majority agrees (vectors of opposite phase
    cancel rather than average), so islands left by local unwrapping errors are outvoted
    unless they dominate the Gaussian's support. Used for the phase offset ``phase0``
    (MCPC-3D-S, Eckstein et al. MRM 2018, smooths it the same way).

    Parameters
    ----------
    phase : (X, Y, Z) array
        Phase (rad), wrapped or not.
    weight : (X, Y, Z) array
        Non-negative weights (e.g. magnitude^2), 0 outside the region of support.
    voxel_size : 3 floats
        Voxel size (mm).
    sigma_mm : float, default 5.0
        Gaussian standard deviation (mm).
    outlier_rad : float, default pi/2
        Voxels further than this (rad, wrapped difference) from the first-pass estimate
        are left out of the second pass.

    Returns
    -------
    smoothed : (X, Y, Z) float32 array
        Smoothed phase (rad) in [-pi, pi]; 0 outside the bounding box of ``weight > 0``.
    coherence : (X, Y, Z) float32 array
        Length of the second-pass weighted mean of the unit phasors, in [0, 1]: near 1 where
        the phase is smooth at the scale of ``sigma_mm``, small where it is not (e.g. around
        a phase singularity) and the estimate is not to be trusted; 0 outside the box.
    """
    p_full = np.asarray(phase, dtype=np.float32)
    w_full = np.asarray(weight, dtype=np.float32)
    out = np.zeros(p_full.shape, np.float32)
    coherence = np.zeros(p_full.shape, np.float32)
    support = w_full > 0
    if not support.any():
        return out, coherence
    # work on the bounding box of the support (the normalised convolution pads by itself)
    box = _bounding_box(support)
    p, w = p_full[box], np.where(support[box], w_full[box], np.float32(0))
    cos, sin = np.cos(p), np.sin(p)
    sig = (float(sigma_mm),) * 3
    (c, s), _ = gaussian_smooth_normalised([cos, sin], w, voxel_size, sig)
    est = np.arctan2(s, c)
    keep = np.abs(wrap_to_pi(p - est)) <= np.float32(outlier_rad)
    (c, s), _ = gaussian_smooth_normalised([cos, sin], w * keep, voxel_size, sig)
    # where every nearby voxel was an outlier, keep the first-pass estimate
    out[box] = np.where((c == 0) & (s == 0), est, np.arctan2(s, c))
    coherence[box] = np.minimum(np.hypot(c, s), np.float32(1))
    return out, coherence


def _bounding_box(m: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of ``m`` (3D, not empty)."""
    box = []
    for axis in range(m.ndim):
        other = tuple(a for a in range(m.ndim) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _component_shift(
    values: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    inside: np.ndarray | None,
    weights: np.ndarray | None,
) -> np.ndarray:
    """Per component, the multiple of 2*pi (one per mask voxel) that moves the weighted mean
    of ``values`` into [-pi, pi). ``inside=None``: the arrays hold the mask voxels already."""
    if inside is not None:
        labels, values = labels[inside], values[inside]
        weights = None if weights is None else weights[inside]
    lab = labels
    w = np.ones(lab.shape, np.float64) if weights is None else weights.astype(np.float64)
    sw = np.bincount(lab, weights=w, minlength=n_labels + 1)
    swv = np.bincount(lab, weights=w * values, minlength=n_labels + 1)
    mean = np.divide(swv, sw, out=np.zeros_like(swv), where=sw > 0)
    k = np.floor((mean + np.pi) / (2 * np.pi)).astype(np.float32)
    return TWO_PI * k[lab]


def unwrap_multi_echo(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: tuple[float, ...],
    spatial: SpatialUnwrapper,
    *,
    echo_strategy: str = "template",
    center_frequency: bool = True,
    congruent: bool = True,
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    phase0_sigma_mm: float = 5.0,
) -> np.ndarray:
    """Spatially and temporally consistent unwrapping of multi-echo phase.

    Parameters
    ----------
    phase : (X, Y, Z, E) array
        Wrapped phase (rad).
    magnitude : (X, Y, Z, E) array or None
        Magnitude; gives the fit weights ``magnitude^2`` and is passed to ``spatial``.
    mask : (X, Y, Z) bool array
        Voxels to unwrap; outside, the wrapped input is returned.
    echo_times : E floats
        Echo times (s), increasing.
    spatial : callable
        ``spatial(wrapped, magnitude_or_None, echo2_wrapped_or_None, te1_over_te2)`` returning
        the spatially unwrapped 3D volume (rad).
    echo_strategy : str, default "template"
        "template": as "temporal", and the one of echo 1 and the echo difference with the
        longer time is re-derived voxel-wise from the other (the template) and a robust
        smooth ``phase0`` (module docstring, step 4). "temporal": echo 1 and the echo
        difference both as unwrapped spatially, echoes after the second voxel-wise against
        the linear prediction. "individual": every echo is unwrapped spatially and only its
        global ``2*pi*k`` per mask component is set from the prediction.
    center_frequency : bool, default True
        Move the mean frequency per mask component to within half a cycle of 0 Hz over
        ``TE_2 - TE_1`` (step 2); otherwise the echo-difference seed keeps its wrapped value.
    congruent : bool, default True
        False (only meaningful for a smooth, non-congruent ``spatial`` such as the Laplacian):
        echo n is the linear prediction ``u_1 + D * (TE_n - TE_1) / (TE_2 - TE_1)``
        ("template" and "temporal", which then coincide) or the spatial estimate shifted by
        its ``2*pi*k`` ("individual").
    voxel_size : 3 floats, default (1.0, 1.0, 1.0)
        Voxel size (mm), for the smoothing of ``phase0`` ("template").
    phase0_sigma_mm : float, default 5.0
        Gaussian sigma (mm) of the robust smoothing of ``phase0`` ("template"; see
        :func:`robust_smooth_phase`).

    Returns
    -------
    (X, Y, Z, E) float32 array
        Unwrapped phase (rad).
    """
    phi = np.nan_to_num(np.asarray(phase, dtype=np.float32))  # NaN/inf -> 0 (finite output)
    if phi.ndim == 3:
        phi = phi[..., None]
    if phi.ndim != 4:
        raise ValueError(f"phase must be (X, Y, Z, E), got shape {phi.shape}")
    n_echo = phi.shape[-1]
    te = np.asarray(echo_times, dtype=np.float64).ravel()
    if te.size != n_echo:
        raise ValueError(f"{te.size} echo times for {n_echo} echoes")
    if n_echo > 1 and np.any(np.diff(te) <= 0):
        raise ValueError("echo times must be strictly increasing")
    if echo_strategy not in ("template", "temporal", "individual"):
        raise ValueError(
            f"echo_strategy must be 'template', 'temporal' or 'individual', not {echo_strategy!r}"
        )
    mag = None
    if magnitude is not None:
        mag = np.nan_to_num(np.asarray(magnitude, dtype=np.float32))
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != phi.shape:
            raise ValueError(f"magnitude shape {mag.shape} != phase shape {phi.shape}")
    m = np.asarray(mask, dtype=bool)
    if m.shape != phi.shape[:3]:
        raise ValueError(f"mask shape {m.shape} != phase grid {phi.shape[:3]}")

    out = phi.copy()
    if not m.any():
        return out
    labels, n_labels = scipy.ndimage.label(m)

    def m_e(n: int) -> np.ndarray | None:
        return None if mag is None else mag[..., n]

    def fit_w_e(n: int, sel: np.ndarray | None = None) -> np.ndarray | None:
        if mag is None:
            return None
        return mag[..., n] ** 2 if sel is None else mag[..., n][sel] ** 2

    # step 1: spatial unwrapping of echo 1
    second = phi[..., 1] if n_echo > 1 and te[0] > 0 else None
    te_ratio = float(te[0] / te[1]) if n_echo > 1 else 1.0
    u1 = np.asarray(spatial(phi[..., 0], m_e(0), second, te_ratio), dtype=np.float32)
    if n_echo == 1:
        # single echo: only the global 2*pi*k per component (mean moved into [-pi, pi))
        shift = np.zeros_like(u1)
        shift[m] = _component_shift(u1, labels, n_labels, m, fit_w_e(0))
        out[..., 0] = np.where(m, u1 - shift, phi[..., 0])
        return out

    # step 2: spatial unwrapping of the echo-difference phase (no phase0, fewer wraps)
    dte = float(te[1] - te[0])
    dphi = wrap_to_pi(phi[..., 1] - phi[..., 0])
    dmag = None if mag is None else np.sqrt(mag[..., 0] * mag[..., 1])
    d = np.asarray(spatial(dphi, dmag, None, 1.0), dtype=np.float32)
    if center_frequency:
        d[m] -= _component_shift(d, labels, n_labels, m, None if dmag is None else dmag**2)

    # step 3: echo 1's 2*pi*k from the mean of the implied phase0
    ratio = np.float32(te[0] / dte)
    phase0 = u1 - d * ratio
    u1[m] -= _component_shift(phase0, labels, n_labels, m, fit_w_e(0))

    # step 4 ("template"): re-derive the steeper of echo 1 / echo difference voxel-wise from
    # the other and a robust smooth phase0; local unwrapping errors of the steeper volume
    # (islands off by 2*pi*k) disappear, those of the template remain
    if echo_strategy == "template" and congruent and te[0] > 0:
        phase0 = u1 - d * ratio
        w0 = m.astype(np.float32) if mag is None else np.where(m, mag[..., 0] ** 2, 0)
        # a 2*pi error of D shifts phase0 by 2*pi*TE_1/dTE: leave such voxels out
        outlier = float(min(0.5 * np.pi, np.pi * float(ratio)))
        p0s, coherence = robust_smooth_phase(
            phase0, w0, voxel_size, sigma_mm=phase0_sigma_mm, outlier_rad=outlier
        )
        # only where phase0 is locally smooth (not e.g. around a phase singularity)
        sel = m & (coherence >= np.float32(MIN_PHASE0_COHERENCE))
        if te[0] <= dte:
            d[sel] = temporal_unwrap(dphi[sel], (u1[sel] - p0s[sel]) / ratio)
        else:
            u1[sel] = temporal_unwrap(phi[..., 0][sel], p0s[sel] + d[sel] * ratio)
    out[..., 0] = np.where(m, u1, phi[..., 0])

    # step 5: later echoes against the linear prediction (on the mask voxels only)
    phi_m = phi[m]
    out_m = np.empty_like(phi_m)
    out_m[:, 0] = u1[m]
    fit_w_m = None if mag is None else mag[m] ** 2
    d_m = d[m]
    for n in range(1, n_echo):
        voxelwise = echo_strategy in ("template", "temporal")
        if n == 1 or (not congruent and voxelwise):
            pred = out_m[:, 0] + d_m * np.float32((te[n] - te[0]) / dte)
        else:
            w = None if fit_w_m is None else fit_w_m[:, :n]
            icpt, slope = weighted_linear_fit(out_m[:, :n], te[:n], w)
            pred = icpt + slope * np.float32(te[n])
        if voxelwise:
            out_m[:, n] = temporal_unwrap(phi_m[:, n], pred) if congruent else pred
        else:
            sn = np.asarray(spatial(phi[..., n], m_e(n), None, 1.0), dtype=np.float32)[m]
            shift = _component_shift(sn - pred, labels[m], n_labels, None, fit_w_e(n, m))
            out_m[:, n] = sn - shift
    out[m] = out_m
    return out
