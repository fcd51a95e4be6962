"""Nonlinear dipole inversion (NDI) by gradient descent.

References
----------
Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables robust
quantitative susceptibility mapping (QSM). NMR Biomed 2020;33:e4271.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.inversion.common import finish, prepare, weights_sq
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn

__all__ = ["ndi"]


def ndi(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    tau: float = 1.0,
    alpha: float = 1e-6,
    max_iter: int = 200,
    phase_scale: float = 16.05,
    support_mask: bool = True,
) -> np.ndarray:
    """Nonlinear dipole inversion by gradient descent (Polak et al. 2020).

    Minimises ``E(x) = 1/2 ||W (exp(i D x) - exp(i phi))||^2 + alpha/2 ||x||^2`` over
    ``x = phase_scale * chi``, with ``phi = phase_scale * f`` the local field as a phase
    (rad), ``D`` the dipole convolution and ``W = mask * weights`` (weights normalised to
    mean 1 in the mask). The gradient is ``D^T [W^2 sin(D x - phi)] + alpha x``; each of
    the ``max_iter`` steps ``x <- x - tau * grad`` costs two :func:`rfftn` and two
    :func:`irfftn`. Starting from zero, the number of iterations regularises the solution
    (the ill-conditioned frequencies grow slowly), as in the paper. By default ``x`` is
    also kept zero outside the mask (``support_mask``), which the paper does not do.

    ``phase_scale`` converts ppm to rad: the default 16.05 rad/ppm is ``2 pi gamma_bar B0
    TE`` at 3 T and TE = 20 ms, so brain tissue fields (|f| < ~0.1 ppm) stay within a few
    rad and the sine keeps its data term close to, but not exactly, the linear one; large
    residuals (wrapped or corrupted voxels) are damped by the sine. The result does not
    depend on the field strength, as the field is given in ppm.

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
        Data-fidelity weights (e.g. magnitude or inverse field noise SD); None means 1.
    tau : float, default 1.0
        Gradient-descent step size (paper: about 1-2). It is capped at ``4 / max(W^2)``
        (below ``2 / L``, with ``L = (4/9) max(W^2)`` the gradient's Lipschitz constant)
        so that strongly varying weights cannot make the iteration diverge.
    alpha : float, default 1e-6
        Tikhonov weight on ``||x||^2`` (paper: a small value for stability).
    max_iter : int, default 200
        Number of gradient-descent iterations (the regularisation of the method).
    phase_scale : float, default 16.05
        Factor (rad/ppm) turning the field into the phase the nonlinear model sees
        (on the head phantom 1.0 gave the same NRMSE as 16.05, 40 a worse one).
    support_mask : bool, default True
        Keep ``x`` zero outside the mask after every step (projected gradient descent):
        the local field is produced by sources inside the mask, and without this
        constraint sources outside it also fit the data. Not in the paper (False runs its
        unconstrained iteration); on the 2 mm head phantom it lowered the NRMSE from 44 %
        to 37 % (200 iterations; 100 gave 37.9 %, tau 2.0 gave 38.6 %).

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    if float(tau) <= 0 or float(alpha) < 0 or float(phase_scale) <= 0:
        raise ValueError("tau and phase_scale must be > 0 and alpha >= 0")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    f, m, shape, box = prepare(local_field, mask)
    w2 = weights_sq(weights, mask, box)
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)

    # field in ppm -> phase in rad; x is the susceptibility in the same scaled units
    phi = f * np.float32(phase_scale)
    w2max = float(w2.max()) if w2.size else 0.0
    step = min(float(tau), 4.0 / w2max) if w2max > 0 else float(tau)
    t = np.float32(step)
    decay = np.float32(1.0 - step * float(alpha))

    mf = m.astype(np.float32)
    x = np.zeros(shape, np.float32)
    for _ in range(int(max_iter)):
        # Polak 2020: gradient of the nonlinear data term, D^T W^2 sin(D x - phi)
        dx = irfftn(rfftn(x) * d, s=shape).astype(np.float32, copy=False)
        dx -= phi
        np.sin(dx, out=dx)
        dx *= w2
        grad = irfftn(rfftn(dx) * d, s=shape).astype(np.float32, copy=False)
        # Polak 2020: gradient-descent step x <- x - tau (grad + alpha x)
        x *= decay
        grad *= t
        x -= grad
        if support_mask:
            x *= mf  # projection onto chi = 0 outside the mask

    chi = x / np.float32(phase_scale)
    return finish(chi, mask, box)
