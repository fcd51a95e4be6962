"""R2* / T2* mapping from multi-echo GRE magnitude (stage ``r2star``).

Model: mono-exponential decay ``m(TE) = S0 exp(-R2* TE)``.

* :func:`r2star_arlo` -- ARLO, auto-regression on linear operations (Pei M, Nguyen TD,
  Thimmappa ND, Salustri C, Dong F, Cooper MA, Li J, Prince MR, Wang Y. Algorithm for fast
  monoexponential fitting based on Auto-Regression on Linear Operations (ARLO) of data.
  Magn Reson Med 2015;73:843-850; erratum doi:10.1002/mrm.27807). Needs >= 3 equally
  spaced echoes.
* :func:`r2star_loglinear` -- weighted log-linear least squares (weights ``m^2``, the inverse
  variance of ``log m`` for Gaussian noise on ``m``).
* :func:`t2star_from_r2star` -- ``T2* = 1 / R2*``.

All R2* maps are in 1/s, float32, clipped to ``[0, max_r2star]`` and 0 outside the mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["r2star_arlo", "r2star_loglinear", "t2star_from_r2star"]


def _prepare(
    magnitude: np.ndarray, echo_times: Sequence[float], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return (magnitude (N, E) float32 of the masked voxels, TEs (s), mask)."""
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim < 2:
        raise ValueError(f"magnitude must have echoes on its last axis; got shape {mag.shape}")
    te = np.asarray(echo_times, dtype=np.float64).ravel()
    if te.size != mag.shape[-1]:
        raise ValueError(f"{te.size} echo times for {mag.shape[-1]} echoes")
    if np.any(te < 0) or not np.all(np.isfinite(te)):
        raise ValueError(f"echo times must be finite and >= 0 (s); got {tuple(te)}")
    m = np.ones(mag.shape[:-1], bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != mag.shape[:-1]:
        raise ValueError(f"mask shape {m.shape} != magnitude shape {mag.shape[:-1]}")
    order = np.argsort(te, kind="stable")
    vals = np.abs(mag[m])[:, order]
    vals[~np.isfinite(vals)] = 0.0
    return vals, te[order], m


def _finish(r2: np.ndarray, m: np.ndarray, max_r2star: float) -> np.ndarray:
    r2 = np.nan_to_num(r2, nan=0.0, posinf=max_r2star, neginf=0.0)
    out = np.zeros(m.shape, np.float32)
    out[m] = np.clip(r2, 0.0, max_r2star) + np.float32(0.0)  # no -0.0
    return out


def r2star_loglinear(
    magnitude: np.ndarray,
    echo_times: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    max_r2star: float = 500.0,
    weighted: bool = True,
) -> np.ndarray:
    """R2* by weighted log-linear least squares.

    Fits ``log m_n = log S0 - R2* TE_n`` with weights ``m_n^2`` (for Gaussian noise of SD
    sigma on ``m``, ``var(log m) ~ sigma^2 / m^2``, so this is the inverse-variance
    weighted linear least squares of log-signal used as reference fit by Pei et al., MRM
    2015). Voxels whose magnitude is <= 0 in an echo get weight 0 for that echo.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) float array
        Magnitude, any scale.
    echo_times : E floats
        Echo times in s (>= 2 distinct values).
    mask : (X, Y, Z) bool array or None, default None
        Voxels to fit (None: all).
    max_r2star : float, default 500.0
        Upper clip in 1/s.
    weighted : bool, default True
        Use ``m^2`` weights; False: ordinary least squares on ``log m``.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* in 1/s, in ``[0, max_r2star]``, 0 outside the mask.
    """
    vals, te, m = _prepare(magnitude, echo_times, mask)
    if np.unique(te).size < 2:
        raise ValueError("log-linear R2* needs at least two distinct echo times")
    pos = vals > 0
    y = np.log(np.where(pos, vals, np.float32(1.0)))
    w = (np.square(vals) if weighted else np.ones_like(vals)) * pos
    scale = float(w.max()) if w.size else 0.0
    if scale > 0:
        w = w / np.float32(scale)
    # weighted linear regression of y on t (echo times centred for conditioning)
    t = (te - te.mean()).astype(np.float32)[None, :]
    s0 = w.sum(axis=1)
    s1 = (w * t).sum(axis=1)
    s2 = (w * t * t).sum(axis=1)
    y0 = (w * y).sum(axis=1)
    y1 = (w * t * y).sum(axis=1)
    det = s0 * s2 - s1 * s1
    ok = det > np.float32(1e-12) * np.maximum(s0 * s2, np.float32(1e-30))
    slope = np.where(ok, (s0 * y1 - s1 * y0) / np.where(ok, det, np.float32(1.0)), 0.0)
    return _finish(-slope, m, max_r2star)


def r2star_arlo(
    magnitude: np.ndarray,
    echo_times: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    max_r2star: float = 500.0,
    spacing_rtol: float = 0.01,
    fallback: bool = True,
) -> np.ndarray:
    """R2* by ARLO, auto-regression on linear operations (Pei et al., MRM 2015).

    For equally spaced echoes (spacing ``dt``), integrating ``m' = -R2* m`` over two
    spacings gives ``s_i = T2* d_i`` with the Simpson's-rule integral
    ``s_i = dt/3 (m_i + 4 m_{i+1} + m_{i+2})`` and ``d_i = m_i - m_{i+2}``. Rewritten as a
    prediction of ``m_{i+2}`` from ``m_i, m_{i+1}`` (the auto-regression), its residual is
    ``(s_i - T2* d_i) / (T2* + dt/3)``; minimising its sum of squares (paper's eq. as
    corrected in the 2019 erratum) gives in closed form::

        R2* = 1 / T2* = (sum s d + dt/3 sum d^2) / (sum s^2 + dt/3 sum s d)

    Parameters
    ----------
    magnitude : (X, Y, Z, E) float array
        Magnitude, any scale.
    echo_times : E floats
        Echo times in s; ARLO needs E >= 3 equally spaced echoes.
    mask : (X, Y, Z) bool array or None, default None
        Voxels to fit (None: all).
    max_r2star : float, default 500.0
        Upper clip in 1/s (also where T2* -> 0).
    spacing_rtol : float, default 0.01
        Relative tolerance on the echo spacings for "equally spaced".
    fallback : bool, default True
        With fewer than 3 echoes or unequal spacing, use :func:`r2star_loglinear` (with a
        ``UserWarning``) instead of raising ``ValueError``.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* in 1/s, in ``[0, max_r2star]``, 0 outside the mask.

    Raises
    ------
    ValueError
        If the echoes are unsuitable for ARLO and ``fallback`` is False.
    """
    te_sorted = np.sort(np.asarray(echo_times, dtype=np.float64).ravel())
    reason = None
    if te_sorted.size < 3:
        reason = f"ARLO needs >= 3 echoes; got {te_sorted.size}"
    else:
        steps = np.diff(te_sorted)
        dt = float(steps.mean())
        if dt <= 0 or np.max(np.abs(steps - dt)) > spacing_rtol * dt:
            reason = f"ARLO needs equally spaced echo times; got {tuple(te_sorted)}"
    if reason is not None:
        if not fallback:
            raise ValueError(reason + " (use r2star_loglinear)")
        warnings.warn(reason + "; using the log-linear fit", UserWarning, stacklevel=2)
        return r2star_loglinear(magnitude, echo_times, mask, max_r2star=max_r2star)

    vals, te, m = _prepare(magnitude, echo_times, mask)
    dt = float(np.diff(te).mean())
    a = np.float32(dt / 3.0)
    # Simpson's-rule integrals over [TE_i, TE_{i+2}] and the differences (linear operations)
    s = a * (vals[:, :-2] + 4.0 * vals[:, 1:-1] + vals[:, 2:])
    d = vals[:, :-2] - vals[:, 2:]
    sd = (s * d).sum(axis=1)
    ss = (s * s).sum(axis=1)
    dd = (d * d).sum(axis=1)
    num = sd + a * dd  # R2* = num / den (1/s)
    den = ss + a * sd
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(den > 0, num / den, np.where(num > 0, np.inf, 0.0))
    return _finish(r2.astype(np.float32), m, max_r2star)


def t2star_from_r2star(r2star: np.ndarray) -> np.ndarray:
    """T2* (s) from R2* (1/s): ``1 / R2*`` where R2* > 0, else 0.

    Parameters
    ----------
    r2star : float array
        R2* in 1/s.

    Returns
    -------
    float32 array of the same shape
        T2* in s (0 where R2* <= 0 or is not finite).
    """
    r2 = np.asarray(r2star, dtype=np.float32)
    ok = np.isfinite(r2) & (r2 > 0)
    out = np.zeros(r2.shape, np.float32)
    out[ok] = np.float32(1.0) / r2[ok]
    return out
