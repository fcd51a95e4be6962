"""Multi-echo combination: inverse-variance weighted linear fit of phase over echo time.

Model: ``phase_n = phase0 + 2*pi*f*TE_n`` per voxel, ``f`` the total field in Hz. The noise
of the phase of echo ``n`` has variance ~ ``sigma^2 / m_n^2`` (``m_n`` its magnitude), so the
weighted least-squares fit uses ``w_n = m_n^2``. Through the origin (``phase0`` removed or
neglected)::

    f = sum_n(m_n^2 TE_n phase_n) / (2 pi sum_n(m_n^2 TE_n^2))

References
----------
* Wu B, Li W, Avram AV, Gho SM, Liu C. Fast and tissue-optimized mapping of magnetic
  susceptibility and T2* with multi-echo and multi-shot spirals. NeuroImage 2012;59:297-305
  (magnitude-weighted multi-echo phase fit).
* Eckstein K et al. MRM 2018;79:2996-3006 (MCPC-3D-S phase offset, see :mod:`.offset`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from qsm_bids.core.echoes.offset import mcpc3ds_offset

__all__ = ["check_echo_inputs", "combine_weighted_fit", "field_noise_sd", "weighted_phase_fit"]

_OFFSETS = ("mcpc3ds", "fit", "none")


def _echo_weights(magnitude: np.ndarray | None, n_echoes: int) -> list[np.ndarray] | None:
    """Per-echo weights ``(m_n / max m)^2`` (float32) or None for equal weights."""
    if magnitude is None:
        return None
    mag = np.asarray(magnitude, dtype=np.float32)
    scale = float(np.abs(mag).max()) if mag.size else 0.0
    inv = np.float32(1.0 / scale) if scale > 0 else np.float32(1.0)
    return [np.square(np.abs(mag[..., n]) * inv) for n in range(n_echoes)]


def check_echo_inputs(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: Sequence[float],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, ...]]:
    """Validate the inputs of an echo-combination method and bring them to one form.

    Parameters
    ----------
    phase : (X, Y, Z, E) or (X, Y, Z) array
        Unwrapped phase in rad.
    magnitude : array of the same shape, or None
        Magnitude (any scale).
    mask : (X, Y, Z) array
        Voxels to fit.
    echo_times : E floats
        Echo times in s, all positive.

    Returns
    -------
    phase : (X, Y, Z, E) float32 array
    magnitude : (X, Y, Z, E) float32 array (non-finite values set to 0) or None
    mask : (X, Y, Z) bool array
    echo_times : tuple of E floats (s)

    Raises
    ------
    ValueError
        On a shape mismatch, a wrong number of echo times or a non-positive echo time.
    """
    ph = np.asarray(phase, dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[..., None]
    if ph.ndim != 4:
        raise ValueError(f"phase must be (X, Y, Z, E); got shape {ph.shape}")
    te = tuple(float(t) for t in echo_times)
    if len(te) != ph.shape[-1]:
        raise ValueError(f"{len(te)} echo times for {ph.shape[-1]} echoes")
    if any(t <= 0 for t in te):
        raise ValueError(f"echo times must be positive (s); got {te}")
    m = np.asarray(mask, dtype=bool)
    if m.shape != ph.shape[:3]:
        raise ValueError(f"mask shape {m.shape} != phase shape {ph.shape[:3]}")
    mag = None
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float32)
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != ph.shape:
            raise ValueError(f"magnitude shape {mag.shape} != phase shape {ph.shape}")
        if not np.isfinite(mag).all():
            mag = np.nan_to_num(mag, nan=0.0, posinf=0.0, neginf=0.0)
    return ph, mag, m, te


def weighted_phase_fit(
    phase: np.ndarray,
    echo_times: Sequence[float],
    weights: np.ndarray | None = None,
    *,
    intercept: bool = False,
    phase_offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-wise weighted least-squares fit of ``phase_n = phase0 + 2 pi f TE_n``.

    Parameters
    ----------
    phase : (..., E) float array
        Unwrapped phase in rad, echoes on the last axis.
    echo_times : E floats
        Echo times in s.
    weights : (..., E) float array or None, default None
        Non-negative weights per echo (inverse phase variance, e.g. ``magnitude**2``);
        ``None``: equal weights.
    intercept : bool, default False
        Fit ``phase0`` too (needs >= 2 distinct echo times); otherwise fit through the origin.
    phase_offset : (...) float array or None, default None
        Known ``phase0`` in rad, subtracted from every echo before the fit.

    Returns
    -------
    field_hz : float32 array, shape ``phase.shape[:-1]``
        Fitted frequency ``f`` in Hz (0 where the weights sum to 0).
    phase0 : float32 array
        Fitted intercept in rad (plus ``phase_offset`` if given; 0 for a fit through the
        origin without ``phase_offset``).
    residual : float32 array
        Weighted RMS residual ``sqrt(sum_n w_n r_n^2 / sum_n w_n)`` in rad (no correction
        for degrees of freedom; 0 for 2 echoes with ``intercept=True`` or a single echo).
    """
    ph = np.asarray(phase, dtype=np.float32)
    te = np.asarray(echo_times, dtype=np.float64)
    n_e = ph.shape[-1]
    if te.size != n_e:
        raise ValueError(f"{te.size} echo times for {n_e} echoes")
    w = None if weights is None else np.asarray(weights, dtype=np.float32)
    if w is not None and w.shape != ph.shape:
        raise ValueError(f"weights shape {w.shape} != phase shape {ph.shape}")
    off = None if phase_offset is None else np.asarray(phase_offset, dtype=np.float32)
    if intercept and np.ptp(te) == 0:
        raise ValueError("a fit with intercept needs at least two distinct echo times")

    # centre the echo times for the intercept fit (better conditioned normal equations)
    t_ref = float(te.mean()) if intercept else 0.0
    tc = [np.float32(t - t_ref) for t in te]
    shape = ph.shape[:-1]
    s0 = np.zeros(shape, np.float32)  # sum w
    s1 = np.zeros(shape, np.float32)  # sum w t
    s2 = np.zeros(shape, np.float32)  # sum w t^2
    y0 = np.zeros(shape, np.float32)  # sum w phi
    y1 = np.zeros(shape, np.float32)  # sum w t phi

    def echo(n: int) -> np.ndarray:
        return ph[..., n] if off is None else ph[..., n] - off

    for n in range(n_e):
        wn = np.float32(1.0) if w is None else w[..., n]
        p = echo(n)
        wp = wn * p
        s0 += wn
        s1 += wn * tc[n]
        s2 += wn * tc[n] ** 2
        y0 += wp
        y1 += wp * tc[n]

    if intercept:
        det = s0 * s2 - s1 * s1
        ok = det > np.float32(1e-12) * np.maximum(s0 * s2, np.float32(1e-30))
        safe = np.where(ok, det, np.float32(1.0))
        slope = np.where(ok, (s0 * y1 - s1 * y0) / safe, np.float32(0.0))
        b = np.where(s0 > 0, (y0 - slope * s1) / np.where(s0 > 0, s0, 1), np.float32(0.0))
        b = np.where(ok, b, np.float32(0.0))
    else:
        ok = s2 > 0
        slope = np.where(ok, y1 / np.where(ok, s2, np.float32(1.0)), np.float32(0.0))
        b = np.zeros(shape, np.float32)
    slope = slope.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)

    # weighted RMS residual (rad)
    rss = np.zeros(shape, np.float32)
    for n in range(n_e):
        wn = np.float32(1.0) if w is None else w[..., n]
        r = echo(n) - b - slope * tc[n]
        rss += wn * r * r
    residual = np.sqrt(rss / np.where(s0 > 0, s0, np.float32(1.0))).astype(np.float32)

    field_hz = (slope / np.float32(2.0 * np.pi)).astype(np.float32)
    phase0 = b - slope * np.float32(t_ref) if intercept else b
    if off is not None:
        phase0 = phase0 + off
    return field_hz, phase0.astype(np.float32, copy=False), residual


def combine_weighted_fit(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: Sequence[float],
    voxel_size: Sequence[float],
    *,
    offset: str = "mcpc3ds",
    offset_sigma_mm: tuple[float, float, float] = (5.0, 5.0, 5.0),
    offset_detrend_order: int = 3,
    magnitude_weighting: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Total field (Hz) from unwrapped multi-echo phase by an inverse-variance weighted fit.

    Stage ``combine``. Fits ``phase_n = phase0 + 2 pi f TE_n`` voxel by voxel with weights
    ``w_n = m_n^2`` (phase noise variance ~ 1 / m_n^2).

    Parameters
    ----------
    phase : (X, Y, Z, E) float array
        Phase in rad, unwrapped in space and consistent across echoes.
    magnitude : (X, Y, Z, E) float array or None
        Magnitude (any scale). ``None`` (phase-only data): equal weights.
    mask : (X, Y, Z) bool array
        Voxels to fit; outputs are 0 outside (and where any echo's phase is not finite).
    echo_times : E floats
        Echo times in s.
    voxel_size : 3 floats
        Voxel size in mm (used by the MCPC-3D-S smoothing).
    offset : {"mcpc3ds", "fit", "none"}, default "mcpc3ds"
        Handling of the phase offset ``phase0`` at TE = 0:

        * ``"mcpc3ds"``: estimate it from echoes 1 and 2 and smooth it (Eckstein et al.,
          MRM 2018; :func:`~qsm_bids.core.echoes.offset.mcpc3ds_offset`), subtract it from
          every echo, then fit through the origin. Needs >= 2 echoes.
        * ``"fit"``: weighted linear fit with a free intercept per voxel (noisier field,
          needs >= 2 echoes; with 2 echoes the residual is 0).
        * ``"none"``: fit through the origin (assumes ``phase0`` = 0, e.g. a phase already
          offset-corrected by the scanner's coil combination).

        With a single echo no offset can be estimated: every mode falls back to
        ``phase / (2 pi TE)`` (a ``UserWarning`` says so for "mcpc3ds" and "fit").
    offset_sigma_mm : 3 floats, default (5.0, 5.0, 5.0)
        Gaussian smoothing sigma of the MCPC-3D-S offset, in mm per axis.
    offset_detrend_order : int, default 3
        Degree of the polynomial trend removed from the MCPC-3D-S offset before smoothing
        (-1: none); see :func:`~qsm_bids.core.echoes.offset.mcpc3ds_offset`.
    magnitude_weighting : bool, default True
        Use ``m_n^2`` weights; ``False``: equal weights.

    Returns
    -------
    field_hz : (X, Y, Z) float32 array
        Total field in Hz (0 outside the mask).
    noise_hz : (X, Y, Z) float32 array
        Standard deviation of the field estimate in Hz (:func:`field_noise_sd`; 0 outside
        the mask): large where the phase does not follow the linear model (unwrapping
        errors, noise, non-linear phase evolution). Its inverse weights the data term of
        the weighted background removal and dipole inversion methods.
    """
    if offset not in _OFFSETS:
        raise ValueError(f"offset must be one of {_OFFSETS}; got {offset!r}")
    ph, mag, m, te = check_echo_inputs(phase, magnitude, mask, echo_times)
    n_e = ph.shape[-1]
    if not np.isfinite(ph).all():
        # non-finite phase (e.g. NaN outside the brain) would spread through the smoothing
        bad = ~np.isfinite(ph)
        m = m & ~bad.any(axis=-1)
        ph = np.where(bad, np.float32(0.0), ph)
        if mag is not None:
            mag = np.where(bad, np.float32(0.0), mag)

    if n_e == 1:
        # a single echo: phase0 cannot be separated from the field -> through the origin
        if offset != "none":
            warnings.warn(
                f"offset={offset!r} needs >= 2 echoes; single echo: field = phase/(2 pi TE)",
                UserWarning,
                stacklevel=2,
            )
        field = ph[..., 0] / np.float32(2.0 * np.pi * te[0])
        field = np.where(m, field, np.float32(0.0)).astype(np.float32)
        w1 = _echo_weights(mag if magnitude_weighting else None, 1)
        s = (np.float32(1.0) if w1 is None else w1[0]) * np.float32(te[0] ** 2)
        noise = field_noise_sd(
            np.zeros(m.shape, np.float32), s + np.zeros(m.shape, np.float32), m, dof=0
        )
        return field, noise

    weights = _echo_weights(mag if magnitude_weighting else None, n_e)
    w = None if weights is None else np.stack(weights, axis=-1)

    phase0 = None
    if offset == "mcpc3ds":
        if te[1] == te[0]:
            raise ValueError("MCPC-3D-S needs TE1 != TE2")
        phase0 = mcpc3ds_offset(
            ph,
            mag if magnitude_weighting else None,
            m,
            te,
            voxel_size,
            sigma_mm=offset_sigma_mm,
            detrend_order=offset_detrend_order,
        )
    intercept = offset == "fit"
    field, _, residual = weighted_phase_fit(ph, te, w, intercept=intercept, phase_offset=phase0)
    # information of the slope per voxel: sum_n w_n (TE_n - TEbar_w)^2 (or sum w TE^2)
    wsum = np.zeros(m.shape, np.float32)
    wt = np.zeros(m.shape, np.float32)
    wtt = np.zeros(m.shape, np.float32)
    for n in range(n_e):
        wn = np.float32(1.0) if w is None else w[..., n]
        wsum += wn
        wt += wn * np.float32(te[n])
        wtt += wn * np.float32(te[n] ** 2)
    if intercept:
        info = wtt - wt * wt / np.where(wsum > 0, wsum, np.float32(1.0))
    else:
        info = wtt
    rss = residual * residual * wsum  # sum_n w_n r_n^2 (rad^2, weight units)
    noise = field_noise_sd(rss, info, m, dof=n_e - (2 if intercept else 1))
    zero = np.float32(0.0)
    return (
        np.where(m, field, zero).astype(np.float32),
        noise,
    )


def field_noise_sd(
    weighted_rss: np.ndarray,
    information: np.ndarray,
    mask: np.ndarray,
    *,
    dof: int,
    default_sigma_rad: float = 0.01,
) -> np.ndarray:
    """Standard deviation (Hz) of a weighted linear fit's field estimate, per voxel.

    For ``phase_n = phase0 + 2 pi f TE_n`` with noise variance ``sigma^2 / w_n``, the slope
    has variance ``sigma^2 / I`` with ``I = sum_n w_n (TE_n - TEbar)^2`` (or ``sum_n w_n
    TE_n^2`` through the origin). ``sigma^2`` is estimated per voxel from the residual,
    ``sum_n w_n r_n^2 / dof``, and over the mask as the median of those; each voxel uses
    the larger of the two, so voxels whose phase does not follow the linear model
    (unwrapping errors, flow, noise-only background) get a large SD and a small weight in
    the weighted inversions.

    Parameters
    ----------
    weighted_rss : (X, Y, Z) array
        ``sum_n w_n r_n^2`` in rad^2 (weight units).
    information : (X, Y, Z) array
        ``I`` above, in weight units x s^2.
    mask : (X, Y, Z) bool array
        Voxels fitted; the SD is 0 outside.
    dof : int
        Degrees of freedom of the residual (echoes minus fitted parameters). With 0 (one
        echo, or two echoes with a fitted offset) the residual says nothing and
        ``default_sigma_rad`` is used.
    default_sigma_rad : float, default 0.01
        Phase noise SD at weight 1 (the brightest voxel) assumed when ``dof`` is 0 (rad):
        an SNR of 100.

    Returns
    -------
    (X, Y, Z) float32 array
        Field SD in Hz (0 outside ``mask``; ``inf`` where ``I`` is 0 inside it).
    """
    m = np.asarray(mask, dtype=bool)
    if dof > 0 and np.any(m):
        var_vox = np.asarray(weighted_rss, np.float32) / np.float32(dof)
        var_global = np.float32(np.median(var_vox[m]))
        if not var_global > 0:
            var_global = np.float32(default_sigma_rad**2)
        var = np.maximum(var_vox, var_global)
    else:
        var = np.full(m.shape, np.float32(default_sigma_rad**2))
    info = np.asarray(information, np.float32)
    with np.errstate(divide="ignore"):
        sd = np.sqrt(var / info) / np.float32(2.0 * np.pi)
    return np.where(m, sd, np.float32(0.0)).astype(np.float32)
