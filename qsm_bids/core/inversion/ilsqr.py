"""iLSQR: least-squares dipole inversion with estimation and removal of streaking artefacts.

References
----------
Li W, Wang N, Yu F, Han H, Cao W, Romero R, Tantiwongkosi B, Duong TQ, Liu C. A method for
estimating and removing streaking artifacts in quantitative susceptibility mapping.
NeuroImage 2015;108:111-122.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.inversion.common import (
    cg,
    cg_normal,
    finish,
    grad_add,
    grad_adjoint,
    grad_scale,
    prepare,
    weights_sq,
)
from qsm_bids.core.kernels import dipole_kernel, irfftn, laplacian_kernel, rfftn, smv_kernel

__all__ = ["ilsqr"]


def _ramp_weights(values: np.ndarray, mask: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    """1 below the ``lo_pct`` percentile of ``values`` in ``mask``, 0 above the ``hi_pct``
    one, linear in between; zero outside ``mask`` (float32)."""
    lo, hi = np.percentile(values[mask], [lo_pct, hi_pct]) if np.any(mask) else (0.0, 1.0)
    span = float(hi - lo) if hi > lo else 1.0
    w = np.clip((float(hi) - values) / np.float32(span), 0.0, 1.0).astype(np.float32)
    w[~mask] = 0
    return w


def _kspace_weights(d: np.ndarray, lo_pct: float, hi_pct: float, n: float) -> np.ndarray:
    """Li 2015, eq. 10: ``|D|^n`` mapped linearly from its ``lo_pct`` / ``hi_pct``
    percentiles (over k-space) to 0 / 1 and clipped; about 1 in the well-conditioned region,
    0 near the magic-angle cone."""
    p = np.abs(d).astype(np.float64) ** n
    lo, hi = np.percentile(p, [lo_pct, hi_pct])
    span = float(hi - lo) if hi > lo else 1.0
    return np.clip((p - lo) / span, 0.0, 1.0).astype(np.float32)


def ilsqr(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    tol: float = 1e-2,
    max_iter: int = 50,
    lsqr_tol: float = 1e-2,
    lsqr_iter: int = 50,
    threshold: float = 0.1,
    laplacian_percentiles: tuple[float, float] = (60.0, 99.9),
    gradient_percentiles: tuple[float, float] = (50.0, 70.0),
    smv_radius_mm: float = 3.0,
    support_mask: bool = True,
) -> np.ndarray:
    """iLSQR dipole inversion with streaking-artefact removal (Li et al. 2015).

    1. Initial solution ``chi_0`` of the weighted least-squares problem
       ``min ||W (D (mask chi) - f)||^2`` by conjugate gradients on the normal equations
       (LSQR in the paper), with ``W^2 = mask * weights^2 * w_L``: ``w_L`` is the
       Laplacian-based reliability weight (eq. 7), 1 where ``|lap f|`` is below its
       ``laplacian_percentiles[0]`` percentile in the mask, 0 above the
       ``laplacian_percentiles[1]`` one, linear in between. Early stopping
       (``lsqr_tol``, ``lsqr_iter``) regularises it; it still contains streaks.
    2. A streak-free "fast QSM" estimate ``chi_fs`` (eq. 8-14): ``sign(D) F f``, whose
       ill-conditioned frequencies are replaced by their spherical-mean (radius
       ``smv_radius_mm``) smoothed values with the k-space weight of eq. 10, twice with a
       mask in between, then scaled and offset by a linear fit to a TKD solution
       (threshold 1/8).
    3. The streaking artefact ``chi_sa``, restricted to the ill-conditioned frequencies
       ``|D| < threshold`` (eq. 4), is the least-squares fit of the gradient of ``chi_0``
       where ``chi_fs`` is smooth: ``min ||W_G (G P_ic chi_sa - G chi_0)||^2`` (eq. 3, 15),
       with ``W_G`` per axis 1 where ``|G_a chi_fs|`` is below its
       ``gradient_percentiles[0]`` percentile in the mask, 0 above the
       ``gradient_percentiles[1]`` one (eq. 15); solved by conjugate gradients on the
       normal equations (LSMR in the paper) to ``tol`` or ``max_iter`` iterations.
    4. ``chi = mask * (chi_0 - chi_sa)``.

    Departures from the paper: in step 1 ``chi`` is kept zero outside the mask
    (``support_mask``; the paper leaves it free, which lets sources outside the mask fit
    the data: 36.6 % NRMSE against 38.2 % on the 2 mm head phantom, and only then do zero
    weights really remove corrupted voxels); conjugate gradients on the normal equations
    replace LSQR/LSMR (the same Krylov iterates in exact arithmetic, stopped on the
    normal-equation residual); the linear fit of eq. 13 is done inside the mask; the fast
    QSM estimate does not use ``weights``; everything runs on the mask's bounding box with
    an 8-voxel margin, with periodic finite differences (steps in geometric-mean voxels).
    Equation numbers follow the paper as cited by public reimplementations.

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
        Data-fidelity weights of step 1 (e.g. inverse field noise SD), multiplied with
        the Laplacian weight; None means 1.
    tol : float, default 1e-2
        Relative residual tolerance of the artefact fit (step 3).
    max_iter : int, default 50
        Maximum iterations of the artefact fit (step 3).
    lsqr_tol : float, default 1e-2
        Relative residual tolerance of the initial least squares (step 1).
    lsqr_iter : int, default 50
        Maximum iterations of the initial least squares (step 1).
    threshold : float, default 0.1
        ``|D|`` below which frequencies are ill-conditioned (paper: 0.1).
    laplacian_percentiles : (float, float), default (60.0, 99.9)
        Percentiles of ``|lap f|`` in the mask where ``w_L`` starts falling / reaches 0.
    gradient_percentiles : (float, float), default (50.0, 70.0)
        Percentiles of ``|G_a chi_fs|`` in the mask where ``W_G`` starts falling / reaches 0.
    smv_radius_mm : float, default 3.0
        Radius (mm) of the spherical-mean filter of the fast QSM estimate (eq. 9, 11).
    support_mask : bool, default True
        Keep ``chi`` zero outside the mask in step 1; False leaves it free, as in the
        paper.

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    if not 0.0 < float(threshold) < 2.0 / 3.0:
        raise ValueError(f"threshold must be in (0, 2/3), got {threshold}")
    for name, pct in (("laplacian", laplacian_percentiles), ("gradient", gradient_percentiles)):
        if len(pct) != 2 or not 0.0 <= float(pct[0]) < float(pct[1]) <= 100.0:
            raise ValueError(f"{name}_percentiles must be 0 <= lo < hi <= 100, got {pct}")
    if int(max_iter) < 1 or int(lsqr_iter) < 1 or float(smv_radius_mm) <= 0:
        raise ValueError("max_iter and lsqr_iter must be >= 1 and smv_radius_mm > 0")
    f, m, shape, box = prepare(local_field, mask)
    mf = m.astype(np.float32)
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)

    def conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return irfftn(rfftn(x) * kernel, s=shape).astype(np.float32, copy=False)

    # ---- Step 1 (eq. 6-7): Laplacian-weighted least squares ----
    lap_f = np.abs(conv(f, laplacian_kernel(shape, voxel_size, real=True)))
    w_lap = _ramp_weights(lap_f, m, *laplacian_percentiles)
    w2 = weights_sq(weights, mask, box) * w_lap
    if support_mask:
        chi0 = cg_normal(lambda x: conv(x * mf, d) * mf, w2, f, int(lsqr_iter), float(lsqr_tol))
    else:
        chi0 = cg_normal(lambda x: conv(x, d), w2, f, int(lsqr_iter), float(lsqr_tol))
    chi0 *= mf

    # ---- Step 2 (eq. 8-14): fast QSM estimate, free of streaks ----
    kf = rfftn(f)
    x_k = np.sign(d) * kf  # eq. 8
    w_fs = _kspace_weights(d, 1.0, 30.0, 0.001)  # eq. 10
    smooth = w_fs + (np.float32(1) - w_fs) * smv_kernel(shape, voxel_size, smv_radius_mm, real=True)
    x_fs = irfftn(x_k * smooth, s=shape).astype(np.float32) * mf  # eq. 9
    x_fs = conv(x_fs, smooth) * mf  # eq. 11
    with np.errstate(divide="ignore"):
        t0 = np.float32(1.0 / 8.0)
        inv_d = np.where(np.abs(d) >= t0, np.float32(1) / d, np.sign(d) / t0)
    x_tkd = irfftn(kf * inv_d.astype(np.float32), s=shape).astype(np.float32)  # eq. 12
    a_fit = np.stack([x_fs[m].astype(np.float64), np.ones(int(m.sum()))], axis=1)
    (slope, offset), *_ = np.linalg.lstsq(a_fit, x_tkd[m].astype(np.float64), rcond=None)  # eq. 13
    chi_fs = (np.float32(slope) * x_fs + np.float32(offset)) * mf  # eq. 14

    # ---- Step 3 (eq. 3, 4, 15): streaking artefacts in the ill-conditioned cone ----
    inv_h = [float(v) for v in 1.0 / grad_scale(voxel_size)]
    g_fs = [np.zeros(shape, np.float32) for _ in range(3)]
    grad_add(chi_fs, inv_h, g_fs)
    w_g = [_ramp_weights(np.abs(g), m, *gradient_percentiles) for g in g_fs]
    w_g2 = [w * w for w in w_g]
    p_ic = (np.abs(d) < np.float32(threshold)).astype(np.float32)
    buf = np.empty(shape, np.float32)
    out = np.empty(shape, np.float32)

    def normal_op(x: np.ndarray) -> np.ndarray:
        """``P G^T W_G^2 G P x`` for ``x = P x`` (``P`` the ill-conditioned projection):
        CG keeps its iterates in the range of ``P``, so the inner ``P`` is skipped."""
        g = [np.zeros(shape, np.float32) for _ in range(3)]
        grad_add(x, inv_h, g)
        for a in range(3):
            g[a] *= w_g2[a]
        return conv(grad_adjoint(g, inv_h, out, buf), p_ic)

    g0 = [np.zeros(shape, np.float32) for _ in range(3)]
    grad_add(chi0, inv_h, g0)
    for a in range(3):
        g0[a] *= w_g2[a]
    rhs = conv(grad_adjoint(g0, inv_h, out, buf), p_ic)
    chi_sa = cg(normal_op, rhs, int(max_iter), float(tol))

    # ---- Step 4: subtract the artefacts ----
    chi = (chi0 - chi_sa) * mf
    return finish(chi, mask, box)
