"""Preconditioned total field inversion (TFI): susceptibility from the total field.

References
----------
Liu Z, Kee Y, Zhou D, Wang Y, Spincemaille P. Preconditioned total field inversion (TFI)
method for quantitative susceptibility mapping. Magn Reson Med 2017;78:303-315.
Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
relationship for robust quantitative susceptibility mapping. Magn Reson Med
2013;69:467-476 (the exponential data term and its Gauss-Newton solution).
Liu T, Liu J, de Rochefort L, et al. Morphology enabled dipole inversion (MEDI) from a
single-angle acquisition. Magn Reson Med 2011;66:777-783 (the magnitude edge mask).

Principle: instead of removing the background field first and inverting the local field
afterwards (two steps whose errors add up, mostly at the brain edge), TFI fits the total
field inside the brain with one susceptibility map that extends beyond the brain: the
sources outside the brain (air, bone, the scalp) produce the background field, those inside
the local field. The susceptibility outside the brain is one to two orders of magnitude
larger than inside, which makes the normal equations badly scaled; TFI therefore solves for
``y`` with ``chi = P y`` and a diagonal preconditioner ``P`` that is 1 inside the brain and
``P_b`` (about the ratio of the outside to the inside susceptibility spread) outside.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from qsm_bids.core.inversion.common import (
    finish,
    grad_add,
    grad_scale,
    prepare,
    resolve_phase_scale,
    weights_sq,
)
from qsm_bids.core.inversion.medi import _check_gauss_newton, _edge_mask, _lagged_diffusivity
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn
from qsm_bids.core.linalg import conjugate_gradient
from qsm_bids.core.stencils import weighted_div_grad

__all__ = ["tfi"]

#: Minimum zero margin (voxels) between the susceptibility support and the box edge.
_MARGIN = 4


def _support(
    mask_box: np.ndarray, voxel_size: tuple[float, ...], extension_mm: float
) -> np.ndarray:
    """Voxels of the box within ``extension_mm`` of the mask (the whole box when <= 0)."""
    if extension_mm <= 0:
        return np.ones(mask_box.shape, bool)
    dist = ndimage.distance_transform_edt(~mask_box, sampling=voxel_size)
    return dist <= float(extension_mm)


def tfi(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    lambda_: float = 2000.0,
    preconditioner: float = 30.0,
    extension_mm: float = 20.0,
    edge_percentage: float = 0.3,
    max_iter: int = 10,
    tol: float = 0.03,
    cg_max_iter: int = 50,
    cg_tol: float = 0.01,
    phase_scale: float = 0.0,
    outside_weight: float = 0.01,
) -> np.ndarray:
    """Preconditioned total field inversion (Liu Z 2017) with MEDI's nonlinear data term.

    Solves, for ``chi = P y`` on the mask dilated by ``extension_mm``,
    ``min_y ||A M G P y||_1 + lambda ||W (exp(i D P y) - exp(i phi))||_2^2`` with
    ``phi = s f`` the total field in rad (``s`` = ``phase_scale``), ``D`` the dipole
    convolution, ``G`` the forward-difference gradient (steps in geometric-mean voxels),
    ``W = mask * weights`` (the field is fitted inside the mask only), ``M`` MEDI's binary
    magnitude edge mask inside the mask, ``A`` = 1 inside the mask and ``outside_weight``
    outside it (Liu Z 2018's tissue-dependent regularisation, ``lambda_1 M + lambda_2 (1 -
    M)``), and the diagonal preconditioner ``P = 1`` inside the mask, ``preconditioner``
    outside it. Gauss-Newton with lagged diffusivity for the L1 norm (Liu T 2013); each
    step's normal equations ``P (G^T R G + 2 lambda D W^2 D) P dy = -grad`` are solved by
    conjugate gradients in the preconditioned variable ``y``. Cost per CG iteration: four
    real FFTs on the mask's bounding box padded by ``extension_mm``.

    Unlike the paper, which fits the field of the whole head, only the field inside the
    brain mask is fitted (the pipeline's total field is masked); the sources outside are
    therefore only seen through their (harmonic) field in the brain, as in PDF, and a
    weak ``outside_weight`` works best: 0.1 or more lets the truncated iterations put
    background into the brain (NRMSE > 100 %), 0 leaves them unregularised (PDF-like).

    Parameters
    ----------
    total_field : (X, Y, Z) array
        Total (unwrapped, echo-combined) field in ppm of B0, background included; values
        outside ``mask`` are ignored. In a recipe, pair with the background stage ``none``.
    mask : (X, Y, Z) array
        Brain mask (non-zero = inside): where the field is fitted and ``chi`` is returned.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    weights : (X, Y, Z) array or None, default None
        Data-fidelity weights ``W`` (e.g. inverse field noise SD), normalised to mean 1 in
        the mask; None means 1.
    magnitude : (X, Y, Z) array or None, default None
        Magnitude image (any scale) whose edges inside the mask define ``M``; None: ``M = 1``.
    lambda_ : float, default 2000.0
        Weight of the data term (``y`` and ``phi`` in rad, gradients per geometric-mean
        voxel); larger means less regularisation. The automatic phase scale is set by the
        total field, ~16x the local field, hence larger than MEDI's 500. Full pipeline on
        the built-in 2 mm phantom (3 T axial / 7 T 15-degree oblique): 1000 -> 28.1 / 29.9 %,
        2000 -> 27.6 / 30.0 %; 4000 -> 32.5 % (axial, without outside TV).
    preconditioner : float, default 30.0
        ``P_b``, the preconditioner outside the mask (Liu Z 2017 used 30 for the brain);
        it changes what the truncated iterations reach, not the minimiser. Phantom: 10 ->
        55.6 / 48.4 %, 20 -> 27.0 / 27.8 %, 30 -> 27.6 / 30.0 %, 50 -> 36 % (axial): too
        small and the background leaks into the brain, too large and the outside sources
        absorb tissue field; 30 keeps away from the steep side.
    extension_mm : float, default 20.0
        The susceptibility is estimated within this distance (mm) of the mask; <= 0 means
        the whole bounding box of the mask padded by 8 voxels (phantom: 27.9 / 29.2 %).
    edge_percentage : float, default 0.3
        Fraction of the gradient components inside the mask treated as magnitude edges
        (not penalised), as in :func:`qsm_bids.core.inversion.medi.medi`.
    max_iter : int, default 10
        Maximum number of Gauss-Newton iterations.
    tol : float, default 0.03
        Stop when the Gauss-Newton update ``||dy|| / ||y||`` falls below ``tol``.
    cg_max_iter : int, default 50
        Maximum conjugate-gradient iterations per Gauss-Newton step (the accuracy keeps
        improving with more: 80 gave 24.7 / 25.8 % at 20 / 40 % more time; 10 x 200 about
        25 % on the axial phantom).
    cg_tol : float, default 0.01
        Relative residual at which the conjugate gradients stop.
    phase_scale : float, default 0.0
        Radians per ppm, ``s``. 0 means automatic: the 99.9th percentile of ``|f|`` in the
        mask becomes 1 rad (the estimate then scales linearly with the field).
    outside_weight : float, default 0.01
        Weight ``A`` of the gradient penalty outside the mask, relative to inside
        (phantom: 0 -> 29.1 % axial, 0.01 -> 27.6 / 30.0 %, 0.03 -> 28.0 / 30.4 %, 0.1 ->
        122 % axial).

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``. Its mean is not determined by
        brain-only data (a uniform susceptibility in the mask has a harmonic field there);
        reference it afterwards.
    """
    _check_gauss_newton(lambda_, edge_percentage, max_iter, cg_max_iter)
    if float(preconditioner) <= 0:
        raise ValueError(f"preconditioner must be > 0, got {preconditioner}")
    if float(outside_weight) < 0:
        raise ValueError(f"outside_weight must be >= 0, got {outside_weight}")
    if not math.isfinite(float(extension_mm)):
        raise ValueError(f"extension_mm must be finite, got {extension_mm}")
    vs = tuple(float(v) for v in voxel_size)
    inv_h = [float(x) for x in 1.0 / grad_scale(vs)]
    ext = float(extension_mm)
    margin = 8 if ext <= 0 else int(math.ceil(ext / min(vs))) + _MARGIN
    f, m, shape, box = prepare(total_field, mask, margin=margin)
    if not np.any(m):
        raise ValueError("mask is empty")
    w2 = weights_sq(weights, mask, box)
    s = resolve_phase_scale(f, w2, phase_scale)
    phi = f
    phi *= np.float32(s)
    del f
    d = dipole_kernel(shape, vs, b0_dir, real=True, dc=0.0)

    # Liu Z 2017, eq. 6: diagonal preconditioner, 1 in the brain, P_b outside it, and 0
    # beyond the support (chi = 0 there).
    prec = np.where(_support(m, vs, ext), np.float32(preconditioner), np.float32(0))
    prec[m] = 1
    prec = prec.astype(np.float32)

    # Liu T 2011, eq. 3: binary mask M of the non-edge gradient components (from the
    # magnitude inside the mask); Liu Z 2018: weaker regularisation A outside the mask.
    edge = _edge_mask(magnitude, mask, box, inv_h, edge_percentage)
    for e in edge:
        e[~m] *= np.float32(outside_weight)
    lam2 = np.float32(2.0 * float(lambda_))
    # lagged-diffusivity smoothing of |x| (rad^2 per voxel^2); 1e-8 rather than MEDI's 1e-6
    # because the total field sets the phase scale, so tissue gradients are ~16x smaller in rad
    eps = np.float32(1e-8)

    buf = np.empty(shape, np.float32)
    gy = [np.empty(shape, np.float32) for _ in range(3)]
    r = [np.empty(shape, np.float32) for _ in range(3)]

    def dconv(x: np.ndarray) -> np.ndarray:
        return irfftn(rfftn(x) * d, s=shape).astype(np.float32, copy=False)

    def hess(p: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Preconditioned Gauss-Newton Hessian ``P (G^T R G + 2 lambda D W^2 D) P p``."""
        np.multiply(p, prec, out=buf)
        weighted_div_grad(buf, r, inv_h, out)
        x = dconv(buf)
        x *= w2
        x = dconv(x)
        x *= lam2
        out += x
        out *= prec
        return out

    y = np.zeros(shape, np.float32)
    chi = np.zeros(shape, np.float32)
    res = np.empty(shape, np.float32)
    for _ in range(int(max_iter)):
        # Liu T 2013: linearise exp(i D chi) around chi; lagged diffusivity for the L1 term
        np.multiply(y, prec, out=chi)
        for g in gy:
            g.fill(0)
        grad_add(chi, inv_h, gy)
        _lagged_diffusivity(edge, gy, eps, r)
        # gradient of the cost in y: P [G^T R G chi + 2 lambda D W^2 sin(D chi - phi)]
        weighted_div_grad(chi, r, inv_h, res)
        x = dconv(chi)
        x -= phi
        np.sin(x, out=x)
        x *= w2
        x = dconv(x)
        x *= lam2
        res += x
        res *= prec
        np.negative(res, out=res)  # CG residual of hess(dy) = -grad at dy = 0
        # conjugate gradients on P H P dy = -grad (Liu Z 2017: CG in the preconditioned y)
        dy = conjugate_gradient(hess, res, max_iter=int(cg_max_iter), tol=float(cg_tol))
        y += dy
        norm = float(np.linalg.norm(y.ravel()))
        if norm > 0 and float(np.linalg.norm(dy.ravel())) / norm < float(tol):
            break
    np.multiply(y, prec, out=chi)
    chi /= np.float32(s)
    return finish(chi, mask, box)
