"""Closed-form Tikhonov-regularised dipole inversion.

References
----------
Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with L2-regularization.
J Magn Reson Imaging 2014;40:181-191.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.inversion.common import finish, grad_symbol_sq, prepare
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn

__all__ = ["tikhonov"]


def tikhonov(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    weights: np.ndarray | None = None,
    lambda_: float = 0.01,
    regularizer: str = "gradient",
) -> np.ndarray:
    """Dipole inversion by closed-form L2 regularisation (Bilgic et al. 2014).

    Solves ``min ||D chi - f||^2 + lambda ||G chi||^2`` on the FFT grid:
    ``chi = F^-1[ D F(f) / (D^2 + lambda |G|^2) ]``, with ``G`` the periodic
    forward-difference gradient (steps in units of the geometric-mean voxel size) or the
    identity.

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local field in ppm; values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Region where the local field is valid.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    weights : (X, Y, Z) array or None, default None
        Ignored (a closed form needs a data term that is diagonal in k-space).
    lambda_ : float, default 0.01
        Regularisation weight (dimensionless; tuned for accuracy on a brain phantom).
    regularizer : {"gradient", "identity"}, default "gradient"
        ``G`` = finite-difference gradient, or the identity (``|G|^2 = 1``).

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside ``mask``.
    """
    del weights
    if float(lambda_) <= 0:
        raise ValueError(f"lambda_ must be > 0, got {lambda_}")
    f, _, shape, sl = prepare(local_field, mask)
    d = dipole_kernel(shape, voxel_size, b0_dir, real=True, dc=0.0)
    if regularizer == "gradient":
        reg = grad_symbol_sq(shape, voxel_size)
    elif regularizer == "identity":
        reg = np.ones_like(d)
    else:
        raise ValueError(f"regularizer must be 'gradient' or 'identity', got {regularizer!r}")
    # Bilgic 2014, eq. 3: closed-form solution; the k = 0 term (0/0) is set to zero
    den = d * d + np.float32(lambda_) * reg
    with np.errstate(divide="ignore", invalid="ignore"):
        filt = np.where(den > 0, d / den, np.float32(0)).astype(np.float32)
    chi = irfftn(rfftn(f) * filt, s=shape)
    return finish(chi, mask, sl)
