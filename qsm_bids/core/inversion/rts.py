"""Rapid two-step (RTS) dipole inversion with a sparsity prior.

References
----------
Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for susceptibility
mapping with sparsity priors. NeuroImage 2018;167:276-283.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.inversion.common import (
    cg_normal,
    finish,
    grad_add,
    grad_adjoint,
    grad_scale,
    grad_symbol_sq,
    prepare,
    weights_sq,
)
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn
from qsm_bids.core.linalg import dot

__all__ = ["rts"]


def _shrink_update(
    z: list[np.ndarray], u: list[np.ndarray], thr: np.float32, buf: np.ndarray
) -> float:
    """Anisotropic soft-thresholding ADMM step, in place.

    On entry ``z[a]`` holds ``G_a chi`` and ``u[a]`` the scaled dual. On exit ``z[a]`` is
    ``shrink(G_a chi + u[a], thr)`` and ``u[a] <- u[a] + G_a chi - z[a]``. Returns the
    primal residual ``||G chi - z||`` (the new dual minus the old one).
    """
    res = 0.0
    for a in range(3):
        np.copyto(buf, u[a])  # old dual
        z[a] += u[a]  # G chi + u
        np.clip(z[a], -thr, thr, out=u[a])  # new dual = the clipped part
        z[a] -= u[a]  # shrink(G chi + u, thr)
        buf -= u[a]
        res += dot(buf, buf)
    return float(np.sqrt(res))


def rts(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    delta: float = 0.15,
    mu: float = 1e5,
    rho: float = 10.0,
    tol: float = 1e-2,
    max_iter: int = 20,
    ls_iter: int = 30,
    rho_tau: float = 0.7,
    rho_gamma: float = 5.0,
    support_mask: bool = True,
) -> np.ndarray:
    """Rapid two-step dipole inversion (Kames, Wiggermann, Rauscher 2018).

    Step 1 estimates the well-conditioned frequencies ``|D| > delta`` by weighted least
    squares, ``ls_iter`` conjugate-gradient (CGLS) iterations from zero with
    ``W = mask * weights`` (weights normalised to mean 1 in the mask). By default it fits
    the full dipole model with ``chi`` supported on the mask,
    ``chi_1 = argmin ||W (D (mask chi) - f)||^2``, and keeps only that solution's
    well-conditioned frequencies (step 2 replaces the others). The paper instead fits only
    those frequencies, in k-space (no weights, zero field outside the mask);
    ``support_mask=False`` does that in image space, ``argmin ||W (F^-1 M D F chi - f)||^2``
    with ``M`` the indicator of ``|D| > delta`` and ``chi`` free. With the field known only
    inside the mask, sources outside it also explain the data: on the 2 mm head phantom
    the final NRMSE was 36 % that way against 26 % with the mask support. Step 2 fills
    only the cone with a sparsity prior:
    ``min_chi ||G chi||_1 + mu/2 ||M F (chi - mask chi_1)||^2`` by ADMM (splitting
    ``z = G chi``, anisotropic TV, steps in geometric-mean voxels), where the large ``mu``
    keeps the well-conditioned frequencies at those of step 1. The ADMM penalty starts at
    ``rho`` and is multiplied by ``rho_gamma`` whenever the primal residual fails to drop
    below ``rho_tau`` times its previous value (residual balancing).

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local field in ppm; values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Region where the local field is valid (zero data weight outside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    weights : (X, Y, Z) array or None, default None
        Data-fidelity weights of step 1 (e.g. inverse field noise SD); None means 1.
    delta : float, default 0.15
        Threshold on ``|D|`` separating the well-conditioned frequencies (paper: 0.15).
    mu : float, default 1e5
        Weight of the well-conditioned k-space consistency in step 2 (paper: 1e5; large
        enough to keep those frequencies fixed).
    rho : float, default 10.0
        Initial ADMM penalty of ``z = G chi`` (paper: 10); the soft threshold is ``1/rho``
        in ppm per mean voxel.
    tol : float, default 1e-2
        Step 2 stops when ``||chi_k - chi_{k-1}|| / ||chi_k||`` falls below ``tol``.
    max_iter : int, default 20
        Maximum number of ADMM iterations in step 2 (paper: 20).
    ls_iter : int, default 30
        Number of CGLS iterations in step 1 (early stopping regularises it; QSM.jl uses 4
        LSMR iterations on the k-space problem; 30 was better here: 26.5 % against 27.1 %
        for 20 and 46 % for 4 on the head phantom).
    rho_tau : float, default 0.7
        Required relative decrease of the primal residual before ``rho`` is increased.
    rho_gamma : float, default 5.0
        Factor by which ``rho`` is increased (1 keeps it fixed).
    support_mask : bool, default True
        Step 1 fits the full dipole model with ``chi`` zero outside the mask; False fits
        only the well-conditioned frequencies with ``chi`` free, as in the paper (see
        above).

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    if not 0.0 < float(delta) < 2.0 / 3.0:
        raise ValueError(f"delta must be in (0, 2/3), got {delta}")
    if float(mu) <= 0 or float(rho) <= 0 or float(rho_gamma) < 1 or float(rho_tau) <= 0:
        raise ValueError("mu and rho must be > 0, rho_gamma >= 1 and rho_tau > 0")
    if int(max_iter) < 1 or int(ls_iter) < 1:
        raise ValueError("max_iter and ls_iter must be >= 1")
    f, m, shape, box = prepare(local_field, mask)
    w2 = weights_sq(weights, mask, box)

    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)
    wc = np.abs(d) > np.float32(delta)  # well-conditioned frequencies (k = 0 excluded)
    md = np.where(wc, d, np.float32(0)).astype(np.float32)

    # ---- Step 1 (Kames 2018): least squares for the well-conditioned region ----
    mf = m.astype(np.float32)
    if not support_mask:
        # as in the paper: fit only the frequencies |D| > delta, chi free over the box
        def apply_a(x: np.ndarray) -> np.ndarray:
            return irfftn(rfftn(x) * md, s=shape).astype(np.float32, copy=False)
    else:
        # full dipole model with chi supported on the mask (A = m D m, symmetric); its
        # ill-conditioned frequencies are discarded by step 2
        def apply_a(x: np.ndarray) -> np.ndarray:
            y = irfftn(rfftn(x * mf) * d, s=shape).astype(np.float32, copy=False)
            y *= mf
            return y

    chi_wc = cg_normal(apply_a, w2, f, int(ls_iter), 1e-6)
    chi_wc *= mf  # the estimate is only meaningful inside the mask

    # ---- Step 2 (Kames 2018): TV-regularised filling of the ill-conditioned cone by ADMM ----
    mu_m = np.where(wc, np.float32(mu), np.float32(0)).astype(np.float32)
    lap = grad_symbol_sq(shape, voxel_size)
    rho_k = float(rho)

    def coefficients(r: float) -> tuple[np.ndarray, np.ndarray]:
        den = mu_m + np.float32(r) * lap
        with np.errstate(divide="ignore"):
            inv = np.where(den > 0, np.float32(1) / den, np.float32(0)).astype(np.float32)
        return (mu_m * inv).astype(np.float32), (np.float32(r) * inv).astype(np.float32)

    x_wc = rfftn(chi_wc)
    coef_wc, coef_g = coefficients(rho_k)
    inv_h = [float(v) for v in 1.0 / grad_scale(voxel_size)]

    chi = chi_wc
    z = [np.zeros(shape, np.float32) for _ in range(3)]
    u = [np.zeros(shape, np.float32) for _ in range(3)]
    buf = np.empty(shape, np.float32)
    tmp = np.empty(shape, np.float32)
    res_prev = np.inf

    for _ in range(int(max_iter)):
        # z-update and scaled dual update: z = shrink(G chi + u, 1/rho), u += G chi - z
        for a in range(3):
            z[a].fill(0)
        grad_add(chi, inv_h, z)
        res = _shrink_update(z, u, np.float32(1.0 / rho_k), buf)

        # residual balancing: raise rho when the primal residual stalls
        if rho_gamma > 1 and res > rho_tau * res_prev:
            rho_k *= float(rho_gamma)
            coef_wc, coef_g = coefficients(rho_k)
            for a in range(3):
                u[a] *= np.float32(1.0 / rho_gamma)
        res_prev = res

        # chi-update: (mu M + rho |G|^2) F chi = mu M F chi_wc + rho F G^T (z - u)
        for a in range(3):
            np.subtract(z[a], u[a], out=z[a])
        k = rfftn(grad_adjoint(z, inv_h, buf, tmp))
        k *= coef_g
        k += coef_wc * x_wc
        chi_new = irfftn(k, s=shape).astype(np.float32, copy=False)

        np.subtract(chi_new, chi, out=buf)
        change = float(np.linalg.norm(buf.ravel()))
        norm = float(np.linalg.norm(chi_new.ravel()))
        chi = chi_new
        if norm > 0 and change < tol * norm:
            break

    return finish(chi, mask, box)
