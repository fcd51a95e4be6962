"""Multi-echo combination by a nonlinear fit of the complex signal, with a field noise map.

Model per voxel (Liu et al. 2013; MEDI toolbox, ``Fit_ppm_complex``)::

    S_n = m_n exp(i (phi0 + 2 pi f TE_n)) + noise_n

with ``m_n`` the measured magnitude of echo ``n`` (it absorbs the R2* decay, so no decay
parameter is fitted), ``phi0`` the phase offset at TE = 0 (rad) and ``f`` the field (Hz).
The least-squares cost ``sum_n |S_n - m_n exp(i theta_n)|^2 = sum_n 2 m_n^2 (1 - cos(psi_n
- theta_n))`` (``psi_n`` the measured phase) is minimised by Gauss-Newton. Compared with a
linear fit of the phase, the complex residual is bounded, so single noisy or mis-unwrapped
echoes (errors of 2 pi k) pull the fit much less. The Gauss-Newton normal matrix gives the
covariance of ``(phi0, f)`` and hence a noise map of the field: its inverse is the data
weight of nonlinear dipole inversions (MEDI's ``N_std``).

References
----------
* Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation of the
  magnetic field to source relationship for robust quantitative susceptibility mapping.
  Magn Reson Med 2013;69:467-476 (complex multi-echo fit, noise standard deviation map).
* Biondetti E, Karsa A, Grussu F, et al. Multi-echo quantitative susceptibility mapping:
  how to combine echoes for accuracy and precision at 3 Tesla. Magn Reson Med
  2022;88:2101-2116 (nonlinear fitting before any Laplacian step was most accurate).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from qsm_bids.core.echoes.fit import check_echo_inputs, weighted_phase_fit
from qsm_bids.core.echoes.offset import gaussian_smooth_normalised

__all__ = ["background_noise_sigma", "combine_nonlinear_fit"]

_NOISE_MODES = ("auto", "residual", "magnitude")
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))  # median / sigma of a Rayleigh variable
_RAYLEIGH_P10 = float(np.sqrt(-2.0 * np.log(0.9)))  # 10th percentile / sigma
_RAYLEIGH_CUT = float(np.sqrt(-2.0 * np.log(1e-3)))  # 99.9th percentile / sigma


def background_noise_sigma(
    magnitude: np.ndarray, mask: np.ndarray, *, min_voxels: int = 200
) -> float | None:
    """Noise standard deviation per real channel from the magnitude background (Rayleigh).

    The voxels outside ``mask`` (dilated by 2 voxels) are assumed to be mostly air, whose
    magnitude follows a Rayleigh distribution of scale ``sigma``; bright tissue outside the
    mask (scalp) is excluded by an iterated truncated median: ``sigma`` starts from the 10th
    percentile and is refined as ``median(v < 3.72 sigma) / 1.1774`` (3.72 sigma is the
    Rayleigh 99.9th percentile). Multi-coil root-sum-of-squares backgrounds are non-central
    chi rather than Rayleigh; the estimate is then biased high by up to ~sqrt(coils).

    Parameters
    ----------
    magnitude : (X, Y, Z) float array
        Magnitude of one echo (any scale).
    mask : (X, Y, Z) bool array
        Brain (or head) mask; its complement is searched for background.
    min_voxels : int, default 200
        Fewest usable background voxels (non-zero, finite) for an estimate.

    Returns
    -------
    float or None
        ``sigma`` in the units of ``magnitude``; None without enough background.
    """
    from scipy import ndimage

    mag = np.asarray(magnitude, dtype=np.float32)
    outside = ~ndimage.binary_dilation(np.asarray(mask, bool), iterations=2)
    vals = mag[outside]
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size < min_voxels:
        return None
    sigma = float(np.percentile(vals, 10.0)) / _RAYLEIGH_P10
    for _ in range(20):
        sel = vals[vals < _RAYLEIGH_CUT * sigma]
        if sel.size < min_voxels // 2:
            break
        new = float(np.median(sel)) / _RAYLEIGH_MEDIAN
        if abs(new - sigma) <= 1e-4 * sigma:
            sigma = new
            break
        sigma = new
    return sigma if sigma > 0 else None


def _prepare(
    unwrapped: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: Sequence[float],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    ph, mag, m, te_tuple = check_echo_inputs(unwrapped, magnitude, mask, echo_times)
    te = np.asarray(te_tuple, dtype=np.float64)
    if mag is not None:
        mag = np.abs(mag)
    bad = ~np.isfinite(ph).all(axis=-1)
    if mag is not None:
        bad |= ~(mag > 0).any(axis=-1)
    return ph, mag, m & ~bad, te


def combine_nonlinear_fit(
    unwrapped: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: Sequence[float],
    voxel_size: Sequence[float],
    *,
    max_iter: int = 30,
    tol: float = 1e-4,
    noise: str = "auto",
    noise_pool_mm: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Total field (Hz) and its noise SD (Hz) by a nonlinear fit of the complex multi-echo data.

    Stage ``combine`` (Liu et al., MRM 2013;69:467; MEDI's ``Fit_ppm_complex``). For each
    voxel in the mask, fits ``S_n = m_n exp(i (phi0 + 2 pi f TE_n))`` to the complex signal
    ``m_n exp(i psi_n)`` by Gauss-Newton, ``m_n`` being the measured magnitude (equal to 1
    without magnitude images). The echo times need not start at 0 (``phi0`` is fitted).

    Parameters
    ----------
    unwrapped : (X, Y, Z, E) float array
        Phase in rad, unwrapped (it seeds the fit so the right 2 pi branch is found; residual
        2 pi errors of single echoes do not bias the complex fit).
    magnitude : (X, Y, Z, E) float array or None
        Magnitude (any scale); the data weights are ``m_n^2``. None: equal weights.
    mask : (X, Y, Z) bool array
        Voxels to fit; outputs are 0 outside (and where the phase is not finite or every
        echo's magnitude is 0).
    echo_times : E floats
        Echo times in s (positive; with E >= 2 at least two distinct).
    voxel_size : 3 floats
        Voxel size in mm (used to pool the residual variance over ``noise_pool_mm``).
    max_iter : int, default 30
        Most Gauss-Newton iterations.
    tol : float, default 1e-4
        A voxel has converged when its field update is below ``tol`` cycles over the echo
        spread, i.e. ``|df| * (TE_max - TE_min) < tol`` (``|df|`` in Hz, TEs in s).
    noise : {"auto", "residual", "magnitude"}, default "auto"
        Scale ``sigma`` (noise SD of the real and imaginary parts) of the noise map:

        * ``"residual"``: from the fit residual, ``sigma^2 = <sum_n |S_n - model_n|^2> /
          (E - 2)``, averaged over a Gaussian neighbourhood of ``noise_pool_mm`` inside
          the mask (a per-voxel estimate from E - 2 degrees of freedom would be too noisy).
          It includes model misfit (intravoxel gradients, non-linear phase), which is real
          error of the field. Needs E >= 3.
        * ``"magnitude"``: from the magnitude background outside the mask
          (:func:`background_noise_sigma`, Rayleigh). Needs magnitude images with a
          background.
        * ``"auto"``: ``"residual"`` for E >= 3, else ``"magnitude"``.

        Where neither is possible (no magnitude and E <= 2) ``sigma`` is set to 1 rad
        equivalent (a uniform relative map) with a ``UserWarning``.
    noise_pool_mm : float, default 10.0
        Gaussian sigma (mm) of the pooling of the squared residuals; 0: one global
        ``sigma`` over the whole mask.

    Returns
    -------
    field_hz : (X, Y, Z) float32 array
        Fitted field ``f`` in Hz (0 outside the mask).
    noise_hz : (X, Y, Z) float32 array
        Standard deviation of ``f`` in Hz from the fit covariance, ``sigma / (2 pi sqrt(sum_n
        m_n^2 (TE_n - TE_w)^2))`` with ``TE_w`` the ``m^2``-weighted mean echo time (0
        outside the mask; floored at 1e-3 of its median inside). ``1 / noise_hz`` is the
        inverse-noise data weight of a dipole inversion.

    Notes
    -----
    A single echo cannot separate ``phi0`` from ``f``: then ``f = psi / (2 pi TE)``
    (``phi0`` assumed 0, a ``UserWarning`` says so) and ``noise_hz = sigma / (2 pi TE m)``
    with ``sigma`` from the magnitude background (uniform ``1 / (2 pi TE)`` Hz without
    magnitude or background). With two echoes the fit is exact (no residual degrees of
    freedom), so the noise must come from the magnitude background.
    """
    if noise not in _NOISE_MODES:
        raise ValueError(f"noise must be one of {_NOISE_MODES}; got {noise!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0; got {max_iter}")
    ph, mag, m, te = _prepare(unwrapped, magnitude, mask, echo_times)
    shape = m.shape
    n_e = te.size
    field = np.zeros(shape, np.float32)
    noise_map = np.zeros(shape, np.float32)
    if not m.any():
        return field, noise_map

    # magnitude scale: weights (m / max m)^2; sigma is expressed in the same units
    scale = float(mag[m].max()) if mag is not None else 1.0
    scale = scale if scale > 0 else 1.0
    psi = ph[m].astype(np.float64)  # (N, E) unwrapped phase in rad
    amp = np.ones_like(psi) if mag is None else mag[m].astype(np.float64) / scale
    w = amp * amp  # (N, E) weights m_n^2

    bg_sigma: float | None = None
    if mag is not None and (noise == "magnitude" or (noise == "auto" and n_e <= 2)):
        sig = background_noise_sigma(mag[..., 0], m)
        bg_sigma = None if sig is None else sig / scale

    if n_e == 1:
        # single echo: phi0 and f are not separable -> f = phase / (2 pi TE)
        warnings.warn(
            "a single echo: phase offset assumed 0, field = phase / (2 pi TE)",
            UserWarning,
            stacklevel=2,
        )
        two_pi_te = 2.0 * np.pi * te[0]
        field[m] = (psi[:, 0] / two_pi_te).astype(np.float32)
        if bg_sigma is None and mag is not None:
            sig = background_noise_sigma(mag[..., 0], m)
            bg_sigma = None if sig is None else sig / scale
        if bg_sigma is None:
            sd = np.full(psi.shape[0], 1.0 / two_pi_te)
        else:
            sd = bg_sigma / (two_pi_te * np.maximum(amp[:, 0], 1e-6))
        noise_map[m] = _floor(sd)
        return field, noise_map

    if np.ptp(te) == 0:
        raise ValueError("a multi-echo fit needs at least two distinct echo times")

    # Liu 2013 / Fit_ppm_complex: Gauss-Newton on theta_n = a + omega (TE_n - TE_w).
    # With TE_w the m^2-weighted mean echo time of the voxel the normal matrix
    # J^T J = diag(sum w, sum w (TE - TE_w)^2) is diagonal and constant over iterations.
    sw = w.sum(axis=1)
    t_w = (w * te).sum(axis=1) / sw
    dt = te[None, :] - t_w[:, None]  # (N, E) centred echo times
    swt2 = (w * dt * dt).sum(axis=1)

    # Step 1: initialise from the m^2-weighted linear fit of the unwrapped phase (intercept)
    f0, p0, _ = weighted_phase_fit(psi.astype(np.float32), te, w.astype(np.float32), intercept=True)
    omega = 2.0 * np.pi * f0.astype(np.float64)
    a = p0.astype(np.float64) + omega * t_w  # phase at TE_w

    def cost(a_: np.ndarray, om: np.ndarray, idx: np.ndarray) -> np.ndarray:
        r = psi[idx] - a_[:, None] - om[:, None] * dt[idx]
        return (w[idx] * (1.0 - np.cos(r))).sum(axis=1)

    # Step 2: Gauss-Newton iterations with step halving, on the not yet converged voxels
    active = np.arange(psi.shape[0])
    span = float(np.ptp(te))
    tol_omega = 2.0 * np.pi * tol / span
    for _ in range(max_iter):
        if active.size == 0:
            break
        r = psi[active] - a[active, None] - omega[active, None] * dt[active]
        s = w[active] * np.sin(r)  # -J^T r (real form)
        da = s.sum(axis=1) / sw[active]
        dom = (s * dt[active]).sum(axis=1) / swt2[active]
        c_old = (w[active] * (1.0 - np.cos(r))).sum(axis=1)
        step = np.ones(active.size)
        for _h in range(6):
            c_new = cost(a[active] + step * da, omega[active] + step * dom, active)
            worse = c_new > c_old * (1.0 + 1e-12) + 1e-300
            if not worse.any():
                break
            step = np.where(worse, 0.5 * step, step)
        a[active] += step * da
        omega[active] += step * dom
        active = active[np.abs(step * dom) >= tol_omega]

    field[m] = (omega / (2.0 * np.pi)).astype(np.float32)

    # Step 3: noise SD of f from the covariance sigma^2 (J^T J)^-1
    mode = noise
    if mode == "auto":
        mode = "residual" if n_e >= 3 else "magnitude"
    if mode == "residual" and n_e < 3:
        raise ValueError("noise='residual' needs >= 3 echoes (2 echoes are fitted exactly)")
    if mode == "residual":
        r = psi - a[:, None] - omega[:, None] * dt
        rss = (2.0 * w * (1.0 - np.cos(r))).sum(axis=1) / (n_e - 2)  # |S - model|^2 / dof
        if noise_pool_mm > 0:
            vol = np.zeros(shape, np.float32)
            vol[m] = rss.astype(np.float32)
            (pooled,), _ = gaussian_smooth_normalised(
                [vol], m.astype(np.float32), voxel_size, (float(noise_pool_mm),) * 3
            )
            var = pooled[m].astype(np.float64)
            var = np.where(var > 0, var, float(np.mean(rss)))
        else:
            var = np.full(rss.shape, float(np.mean(rss)))
        sigma = np.sqrt(var)
    else:
        if bg_sigma is None:
            warnings.warn(
                "no magnitude background to estimate the noise: uniform relative noise map",
                UserWarning,
                stacklevel=2,
            )
            sigma = np.ones(psi.shape[0])
        else:
            sigma = np.full(psi.shape[0], bg_sigma)
    sd = sigma / (2.0 * np.pi * np.sqrt(np.maximum(swt2, 1e-300)))
    noise_map[m] = _floor(sd)
    return field, noise_map


def _floor(sd: np.ndarray) -> np.ndarray:
    """float32 noise SD floored at 1e-3 of its median (so that 1/noise stays finite)."""
    sd = np.nan_to_num(np.asarray(sd, dtype=np.float64), nan=np.inf, posinf=np.inf)
    finite = sd[np.isfinite(sd)]
    med = float(np.median(finite)) if finite.size else 1.0
    floor = 1e-3 * med if med > 0 else 1e-12
    sd = np.where(np.isfinite(sd), sd, 1e3 * max(med, floor))
    return np.maximum(sd, floor).astype(np.float32)
