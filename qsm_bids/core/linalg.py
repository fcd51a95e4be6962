"""In-place vector operations for the iterative solvers (conjugate gradients) of qsm_bids:
no temporary volume per iteration."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two float32 arrays (BLAS, returned as a Python float)."""
    return float(np.dot(a.ravel(), b.ravel()))


def axpy(alpha: float | np.float32, x: np.ndarray, y: np.ndarray) -> None:
    """In place ``y += alpha * x`` without a temporary array."""
    blas_axpy = scipy.linalg.blas.get_blas_funcs("axpy", (x, y))
    blas_axpy(x.ravel(), y.ravel(), a=float(alpha))


def conjugate_gradient(
    apply_a: Callable[[np.ndarray, np.ndarray], object],
    b: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    precond: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Solve ``A x = b`` (``A`` symmetric positive definite) by conjugate gradients from 0.

    Hestenes & Stiefel 1952; preconditioned form as in Shewchuk, "An introduction to the
    conjugate gradient method without the agonizing pain" (1994), B2. All vectors float32,
    updated in place (BLAS ``axpy``/``dot``); no temporary volume per iteration beyond what
    ``apply_a`` and ``precond`` allocate.

    Parameters
    ----------
    apply_a : callable ``(p, out) -> None``
        Writes ``A p`` into ``out``.
    b : ndarray (float32)
        Right-hand side (not modified).
    max_iter : int
        Maximum number of iterations (each one ``apply_a``).
    tol : float
        Stop when ``||r|| <= tol ||b||`` (residual of the unpreconditioned system).
    precond : callable ``r -> z`` or None, default None
        Applies an approximation of ``A^-1`` (symmetric positive definite); None: plain CG.

    Returns
    -------
    ndarray (float32)
        The iterate after the last iteration; also stops early when ``p^T A p <= 0``.
    """
    x = np.zeros_like(b, dtype=np.float32)
    r = np.array(b, dtype=np.float32, copy=True)
    z = precond(r) if precond is not None else r
    p = np.array(z, dtype=np.float32, copy=True)
    ap = np.empty_like(r)
    rz = dot(r, z)
    rr = rz if precond is None else dot(r, r)
    stop = float(tol) ** 2 * rr
    for _ in range(int(max_iter)):
        if rz == 0.0 or rr <= stop:
            break
        apply_a(p, ap)
        p_ap = dot(p, ap)
        if p_ap <= 0.0:
            break
        alpha = rz / p_ap
        axpy(alpha, p, x)  # x += alpha p
        axpy(-alpha, ap, r)  # r -= alpha A p
        z = precond(r) if precond is not None else r
        rz_new = dot(r, z)
        rr = rz_new if precond is None else dot(r, r)
        p *= np.float32(rz_new / rz)  # p = z + beta p
        p += z
        rz = rz_new
    return x
