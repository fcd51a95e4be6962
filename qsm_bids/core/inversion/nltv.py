"""Nonlinear total-variation dipole inversion (FANSI), optionally with weak harmonics.

References
----------
Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
inversion with variational regularization. Magn Reson Med 2018;80:814-821 (FANSI).
Milovic C, Bilgic B, Zhao B, Langkammer C, Tejos C, Acosta-Cabronero J. Weak-harmonic
regularization for quantitative susceptibility mapping. Magn Reson Med 2019;81:1399-1411.
"""

from __future__ import annotations

import logging

import numpy as np

from qsm_bids.core.inversion.common import (
    finish,
    grad_add,
    grad_adjoint,
    grad_scale,
    grad_symbol_sq,
    prepare,
    resolve_phase_scale,
    weights_sq,
)
from qsm_bids.core.inversion.regularisation import automatic_lambda
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn

__all__ = ["LAMBDA_PER_SIGMA", "nltv"]

log = logging.getLogger("qsm_bids")

#: The automatic TV weight of :func:`nltv` per unit of the field's cone inconsistency
#: (``lambda_ppm = LAMBDA_PER_SIGMA * sigma``; weak-harmonic term on, beta 150). Chosen on
#: a real brain and the realistic simulator together (benchmarks/RESULTS.md):
#:
#: * 2016 challenge brain (sigma 0.0069 ppm): 0.094 / 0.115 / 0.144 gave NRMSE against
#:   chi_33 76.2 / 74.0 / 73.1 %, against COSMOS 62.4 / 62.0 / 63.2 %, slope 0.68 / 0.63 /
#:   0.57: below about 0.1 the map is too rough, above about 0.12 too smooth (slope < 0.6);
#: * realistic phantom, 1.5 mm, 3 T, SNR 40, PDF local field of the pipeline (sigma
#:   0.0038 ppm): 0.06 / 0.09 / 0.12 / 0.16 gave 44.2 / 42.7 / 43.5 / 45.3 %; at SNR 100
#:   with 5 ppb anisotropy (sigma 0.0033) 0.06 / 0.09 / 0.12 gave 30.1 / 31.0 / 32.8 %.
#:
#: 0.11 is within a point of the simulator's best and inside the real brain's window.
LAMBDA_PER_SIGMA = 0.11


def _newton_phase(
    u: np.ndarray, phi: np.ndarray, w2: np.ndarray, mu: float, n_iter: int
) -> np.ndarray:
    """Voxel-wise ``argmin_v w2 (1 - cos(v - phi)) + mu/2 (v - u)^2`` by Newton from ``u``.

    The nonlinear sub-problem of FANSI (Milovic 2018, eq. 9): ``h(v) = w2 sin(v - phi) +
    mu (v - u) = 0``. Where the curvature ``w2 cos(v - phi) + mu`` is not positive (a
    residual beyond pi/2 with a large weight) the step uses the majorising curvature
    ``w2 + mu`` instead, so every step descends.
    """
    v = u.copy()
    m = np.float32(mu)
    for _ in range(int(n_iter)):
        r = v - phi
        h = w2 * np.sin(r) + m * (v - u)
        c = w2 * np.cos(r) + m
        c = np.where(c > np.float32(0.1) * m, c, w2 + m)
        v -= h / c
    return v


def nltv(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    lambda_: float = 0.0,
    lambda_per_sigma: float = LAMBDA_PER_SIGMA,
    rho: float = 1e-2,
    max_iter: int = 200,
    tol: float = 2e-3,
    isotropic: bool = False,
    weak_harmonic: bool = False,
    beta: float = 150.0,
    mu_h: float = 3.0,
    newton_iter: int = 2,
    phase_scale: float = 0.0,
) -> np.ndarray:
    """Nonlinear TV dipole inversion by ADMM (FANSI, Milovic 2018; weak harmonics, 2019).

    Solves ``min_y 1/2 ||W (exp(i D y) - exp(i phi))||_2^2 + lambda ||G y||_1`` with
    ``phi = s f`` the field in rad (``s`` = ``phase_scale``), ``y = s chi``, ``D`` the dipole
    convolution, ``G`` the forward-difference gradient (steps in geometric-mean voxels) and
    ``W = mask * weights`` (mean 1 in the mask). FANSI's splitting ``z = G y``,
    ``v = D y`` gives a k-space division for ``y``, soft-thresholding for ``z`` and, for
    ``v``, a voxel-wise nonlinear problem solved by a few Newton steps.

    With ``weak_harmonic=True`` (Milovic 2019) the data term becomes
    ``1/2 ||W (exp(i (D y + h)) - exp(i phi))||^2 + beta/2 ||M L h||^2``: a residual
    background phase ``h`` (rad), harmonic inside the mask ``M`` in the weak sense of the
    discrete Laplacian ``L``, is estimated jointly (split ``z_h = L h`` with penalty
    ``mu_h``), and ``y`` is restricted to the mask after each update (as in that paper)
    so that sources outside the mask cannot absorb ``h``.

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local field in ppm; values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Region where the local field is valid (the data weight is zero outside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    weights : (X, Y, Z) array or None, default None
        Data-fidelity weights ``W`` (e.g. inverse field noise SD or magnitude); None
        means 1.
    lambda_ : float, default 0.0
        TV weight, in rad (the unit of ``phi``); with the automatic phase scale it acts like
        ``lambda_ * p`` in the ppm units of :func:`tv_admm`, ``p`` the 99.9th percentile of
        ``|f|``. 0 (the default) chooses it from the data:
        ``lambda_per_sigma * sigma * s`` with ``sigma`` the field's inconsistency on the
        dipole cone (ppm, :func:`~qsm_bids.core.inversion.regularisation.cone_inconsistency`)
        and ``s`` the phase scale; the value used is logged. A positive value is used as
        given (before 2026-12, 7e-4 was the default: chosen on the built-in phantom, whose
        data share the inversion's own kernel, it under-regularises real brains).
    lambda_per_sigma : float, default :data:`LAMBDA_PER_SIGMA`
        The automatic weight per unit of cone inconsistency (used when ``lambda_`` is 0);
        how it was chosen is in :data:`LAMBDA_PER_SIGMA`.
    rho : float, default 1e-2
        ADMM penalty of the gradient constraint ``z = G y`` (FANSI's mu1); the penalty of
        the data constraint ``v = D y`` (FANSI's mu2) is fixed at 1.
    max_iter : int, default 200
        Maximum number of ADMM iterations.
    tol : float, default 2e-3
        Stop when ``||y_k - y_{k-1}|| / ||y_k||`` falls below ``tol`` (5e-3 is about
        twice as fast and 0.4 % NRMSE worse on the phantom).
    isotropic : bool, default False
        Isotropic TV (shrink the gradient vector's length) instead of anisotropic TV.
    weak_harmonic : bool, default False
        Estimate a residual background phase jointly (Milovic 2019).
    beta : float, default 150.0
        Weight of the harmonic penalty ``||M L h||^2`` (weak-harmonic only; the paper's
        default).
    mu_h : float, default 3.0
        ADMM penalty of ``z_h = L h`` (weak-harmonic only; the paper recommends beta/50).
    newton_iter : int, default 2
        Newton steps per ADMM iteration for the nonlinear data sub-problem, started from
        the previous ``D y + t`` (1, 2 and 4 gave the same 18.7 % on the phantom; 4 costs
        40 % more time).
    phase_scale : float, default 0.0
        Radians per ppm, ``s``. 0 means automatic: the 99.9th percentile of ``|f|`` over
        the voxels of positive weight becomes 1 rad (the phase stays within about +-1 rad
        and the estimate scales linearly with the field). Set ``2 pi gamma_bar B0 TE`` for
        a physical echo.

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    if float(lambda_) < 0 or float(rho) <= 0:
        raise ValueError("lambda_ must be >= 0 (0: automatic) and rho > 0")
    if weak_harmonic and (float(beta) <= 0 or float(mu_h) <= 0):
        raise ValueError("beta and mu_h must be > 0")
    if int(max_iter) < 1 or int(newton_iter) < 1:
        raise ValueError("max_iter and newton_iter must be >= 1")
    f, m, shape, box = prepare(local_field, mask)
    w2 = weights_sq(weights, mask, box)
    s = resolve_phase_scale(f, w2, phase_scale)
    if float(lambda_) == 0:
        # the weight from the data: proportional to the field's error level (ppm)
        lam_ppm, sigma = automatic_lambda(
            local_field, mask, voxel_size, b0_dir, lambda_per_sigma, weights=weights
        )
        lambda_ = lam_ppm * s
        log.info(
            "nltv: TV weight from the data %.3g ppm (cone inconsistency %.3g ppm)", lam_ppm, sigma
        )
    mu1 = np.float32(rho)
    mu2 = np.float32(1.0)

    # The nonlinear v-update only matters where W > 0: work on those voxels' values.
    data = np.flatnonzero(w2.ravel() > 0)
    w2_d = w2.ravel()[data]
    phi_d = (f.ravel()[data] * np.float32(s)).astype(np.float32)

    # Kernels and denominators, once (FANSI: the y sub-problem is a k-space division).
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)
    gsq = grad_symbol_sq(shape, voxel_size)  # |G(k)|^2 = minus the Laplacian's symbol
    den = mu1 * gsq + mu2 * d * d
    with np.errstate(divide="ignore"):
        inv_den = np.where(den > 0, np.float32(1) / den, np.float32(0)).astype(np.float32)
    coef_g = (mu1 * inv_den).astype(np.float32)
    coef_d = (mu2 * d * inv_den).astype(np.float32)
    del den, inv_den
    inv_h = [float(x) for x in 1.0 / grad_scale(voxel_size)]
    kappa = np.float32(float(lambda_) / float(rho))
    if weak_harmonic:
        muh = np.float32(mu_h)
        # Milovic 2019: h-update denominator mu2 + mu_h |L|^2, z_h-update mu_h + beta M
        h_den = (np.float32(1) / (mu2 + muh * gsq * gsq)).astype(np.float32)
        zh_den = (muh / (muh + np.float32(beta) * m.astype(np.float32))).astype(np.float32)
        h = np.zeros(shape, np.float32)
        zh = np.zeros(shape, np.float32)
        sh = np.zeros(shape, np.float32)
        mf = m.astype(np.float32)

    # ADMM variables (scaled form): z = G y with dual q, v = D y (+ h) with dual t.
    y = np.zeros(shape, np.float32)
    z = [np.zeros(shape, np.float32) for _ in range(3)]
    q = [np.zeros(shape, np.float32) for _ in range(3)]
    v = np.zeros(shape, np.float32)
    v.ravel()[data] = phi_d  # FANSI's start: v = phi where there are data
    t = np.zeros(shape, np.float32)
    buf = np.empty(shape, np.float32)
    tmp = np.empty(shape, np.float32)

    for _ in range(int(max_iter)):
        # (1) y = argmin mu1/2||G y - z + q||^2 + mu2/2||D y + h - v + t||^2 (k-space)
        for a in range(3):
            np.subtract(z[a], q[a], out=z[a])
        k_g = rfftn(grad_adjoint(z, inv_h, buf, tmp))
        np.subtract(v, t, out=buf)
        if weak_harmonic:
            buf -= h
        k_d = rfftn(buf)
        k_g *= coef_g
        k_d *= coef_d
        k_g += k_d
        y_new = irfftn(k_g, s=shape).astype(np.float32, copy=False)
        if weak_harmonic:
            y_new *= mf  # Milovic 2019: susceptibility sources only inside the mask
            k_y = rfftn(y_new)
        else:
            k_y = k_g
        dy = irfftn(k_y * d, s=shape).astype(np.float32, copy=False)  # D y

        # (2) z = shrink(G y + q, lambda/mu1); dual q <- G y + q - z
        for a in range(3):
            np.copyto(z[a], q[a])
        grad_add(y_new, inv_h, z)
        if isotropic:
            np.multiply(z[0], z[0], out=buf)
            for a in (1, 2):
                np.multiply(z[a], z[a], out=tmp)
                buf += tmp
            np.sqrt(buf, out=buf)
            np.maximum(buf, kappa, out=buf)
            np.divide(kappa, buf, out=buf)
            for a in range(3):
                np.multiply(z[a], buf, out=q[a])
                z[a] -= q[a]
        else:
            for a in range(3):
                np.clip(z[a], -kappa, kappa, out=q[a])
                z[a] -= q[a]

        # (3) v = argmin 1/2||W(exp(iv) - exp(i phi))||^2 + mu2/2||v - (D y + h + t)||^2:
        # Milovic 2018, eq. 9, Newton per voxel; v = D y + h + t where W = 0
        dy += t
        if weak_harmonic:
            dy += h
        np.copyto(v, dy)
        v.ravel()[data] = _newton_phase(dy.ravel()[data], phi_d, w2_d, float(mu2), newton_iter)

        if weak_harmonic:
            # (4) h = argmin mu_h/2||L h - z_h + s_h||^2 + mu2/2||D y + h - v + t||^2,
            # with dy - h = D y + t: k-space division (Milovic 2019)
            dy -= h
            np.subtract(v, dy, out=buf)
            k_h = (rfftn(zh - sh) * (muh * gsq) + mu2 * rfftn(buf)) * h_den
            h = irfftn(k_h, s=shape).astype(np.float32, copy=False)
            lh = irfftn(k_h * gsq, s=shape).astype(np.float32, copy=False)  # L h
            # (5) z_h = argmin beta/2||M z_h||^2 + mu_h/2||z_h - (L h + s_h)||^2
            lh += sh
            np.multiply(lh, zh_den, out=zh)
            np.subtract(lh, zh, out=sh)  # dual s_h <- L h + s_h - z_h
            dy += h
        np.subtract(dy, v, out=t)  # dual t <- D y + h + t - v

        # convergence on the relative change of y
        np.subtract(y_new, y, out=y)
        change = float(np.linalg.norm(y.ravel()))
        y = y_new
        norm = float(np.linalg.norm(y.ravel()))
        if norm > 0 and change / norm < tol:
            break

    return finish(y / np.float32(s), mask, box)
