"""iSMV background field removal (iterative spherical mean value).

Reference
---------
* Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value method
  for background field removal in MRI. Magn Reson Med 2014;72:1065-1071.

Principle: the background field ``b`` is harmonic inside the mask, so it equals its own
spherical mean ``S_r b`` on the mask ``M`` eroded by the radius ``r``. Wen et al. take the
measured field on the boundary shell (mask minus ``M``) as the boundary condition and
iterate the SMV filter inside,

    b_{k+1} = M S_r b_k + (1 - M) f      (on the mask; zero outside),

starting from ``b_0 = f``; the fixed point is the discrete harmonic extension of the shell
values into ``M``, and the local field is ``f - b`` on ``M``. The iteration is a Jacobi-type
smoother that needs hundreds of SMV filterings on a head; here the same fixed point, the
solution of ``(I - M S_r M) b_M = M S_r (1 - M) f``, is reached by conjugate gradients (the
operator is symmetric positive definite: ``S_r`` is real and symmetric with a k-space symbol
in about [-0.09, 1], and ``M S_r M`` has norm below 1 on a bounded region), which converges in
a few tens of SMV filterings. The harmonic part of the local field (including its mean) is
attributed to the background.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core import kernels
from qsm_bids.core.background._common import _crop_pad, _smv_and_erosion
from qsm_bids.core.linalg import conjugate_gradient

__all__ = ["ismv"]


def ismv(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    *,
    radius_mm: float = 3.0,
    tol: float = 1e-3,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with iSMV (Wen et al., MRM 2014).

    Parameters
    ----------
    field : (X, Y, Z) array
        Total (unwrapped, echo-combined) field map, any linear unit (the pipeline passes Hz).
        Values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Brain mask (non-zero = inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space. Not used (the SMV kernel is isotropic); accepted
        for a uniform stage signature.
    radius_mm : float, default 3.0
        Radius of the spherical-mean-value kernel in mm: the thickness of the boundary shell
        whose field values are the boundary condition; the returned mask is the input mask
        eroded by it. At least the smallest voxel edge (one-voxel sphere otherwise).
    tol : float, default 1e-3
        Stop when the residual norm of the fixed-point equation falls below ``tol`` times
        its initial value (at ``b = f``).
    max_iter : int, default 200
        Maximum number of conjugate-gradient iterations (one forward/inverse real FFT pair
        each, on the mask's bounding box padded by the radius).

    Returns
    -------
    local_field : (X, Y, Z) float32 array
        ``f - b`` on ``local_mask`` (same unit as ``field``), zero outside.
    local_mask : (X, Y, Z) bool array
        ``mask`` eroded by ``radius_mm``.

    Notes
    -----
    Defaults tuned on the head phantom of :mod:`qsm_bids.simulate` (2 mm) and a qsm-forward
    ellipsoid head (1 mm), given the true total field. Local-field NRMSE (demeaned, truth
    mask and returned mask eroded by 3 voxels): 42 % (true mask) and 18 % (magnitude mask) at
    3 T, 53 % / 36 % at 7 T 15 deg oblique, 61 % on qsm-forward; the result depends strongly
    on which tissue falls in the boundary shell, so on the mask and the radius. About 1.5 s at
    180x220x180 on 2 cores (8 s at ``max_iter``).
    """
    del b0_dir  # the SMV / Laplacian operators are isotropic (see docstring)
    f = np.asarray(field, dtype=np.float32)
    m = np.asarray(mask) != 0
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"field {f.shape} and mask {m.shape} must be 3D arrays of one shape")
    vs = tuple(float(v) for v in voxel_size)
    if not radius_mm >= min(vs):
        raise ValueError(
            f"radius_mm {radius_mm} must be at least the smallest voxel edge {min(vs)}"
        )
    if tol <= 0 or max_iter < 1:
        raise ValueError("tol must be > 0 and max_iter >= 1")
    out_local = np.zeros(f.shape, dtype=np.float32)
    out_mask = np.zeros(f.shape, dtype=bool)
    if not np.any(m):
        return out_local, out_mask

    # Grid: the mask's bounding box padded by the radius; SMV kernel built once.
    fp, mp, crop, sl, shape = _crop_pad(f, m, vs, float(radius_mm))
    s_k, eroded = _smv_and_erosion(shape, vs, float(radius_mm), mp)
    inner = eroded.astype(np.float32)  # M

    def smv(x: np.ndarray) -> np.ndarray:
        spec = kernels.rfftn(x)
        spec *= s_k
        return kernels.irfftn(spec, s=shape)

    # Boundary condition (Wen 2014): the measured field on the shell mask - M; zero outside.
    bc = np.where(mp & ~eroded, fp, np.float32(0.0))
    # Fixed point b = M S b + bc  <=>  A u = rhs for u = M b, A = I - M S M, rhs = M S bc.
    rhs = smv(bc)
    rhs *= inner
    del bc

    def op(u: np.ndarray) -> np.ndarray:
        y = smv(u)
        y *= inner
        np.subtract(u, y, out=y)
        return y

    # Conjugate gradients from the paper's starting point b_0 = f (u_0 = M f): solve for the
    # correction du = u - u_0, A du = rhs - A u_0, from 0.
    u = fp * inner
    r = rhs
    r -= op(u)
    u += conjugate_gradient(
        lambda p, out: np.copyto(out, op(p)), r, max_iter=int(max_iter), tol=float(tol)
    )
    del r

    # Local field f - b on M.
    local = np.where(eroded, fp - u, np.float32(0.0))
    out_local[crop] = local[sl]
    out_mask[crop] = eroded[sl]
    return out_local, out_mask
