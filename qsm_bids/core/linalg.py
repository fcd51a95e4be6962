"""In-place vector operations for the iterative solvers (conjugate gradients) of qsm_bids:
no temporary volume per iteration."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

from qsm_bids.core.kernels import irfftn, rfftn


def one_blas_thread() -> threadpool_limits:
    """Context manager that runs BLAS (OpenBLAS, MKL, BLIS) on one thread inside it.

    The solvers use BLAS only for memory-bound vector operations (:func:`dot`,
    :func:`axpy`, norms), which gain little from threads; but after every call OpenBLAS's
    idle threads busy-wait for a while, taking the cores from the FFT threads that follow.
    On 2 cores at 1 mm this made the FFTs inside PDF and MEDI about 1.5x slower (PDF 7.5
    against 4.9 s, MEDI 12.5 against 10.0 s; benchmarks/RESULTS.md). The pipeline's stage
    interfaces run every algorithm inside it; so do the benchmarks.
    """
    return threadpool_limits(limits=1, user_api="blas")


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two float32 arrays (BLAS, returned as a Python float)."""
    return float(np.dot(a.ravel(), b.ravel()))


def axpy(alpha: float | np.float32, x: np.ndarray, y: np.ndarray) -> None:
    """In place ``y += alpha * x`` without a temporary array."""
    blas_axpy = scipy.linalg.blas.get_blas_funcs("axpy", (x, y))
    blas_axpy(x.ravel(), y.ravel(), a=float(alpha))


class KSpacePreconditioner:
    """A preconditioner that multiplies by ``kinv`` in k-space: ``z = F^-1 (kinv F r)``.

    Given to :func:`conjugate_gradient` as ``kspace``, it lets the solver carry the spectrum
    of the search direction along (``F p_new = F z + beta F p`` by linearity), so an
    operator whose first step is ``F p`` (a dipole convolution) gets it without an FFT:
    one forward FFT fewer per iteration.

    Parameters
    ----------
    kinv : (X, Y, Z // 2 + 1) float32 array
        The multiplier on the half spectrum of :func:`qsm_bids.core.kernels.rfftn`.
    shape : 3 ints
        Real-space shape.
    """

    def __init__(self, kinv: np.ndarray, shape: tuple[int, ...]) -> None:
        self.kinv = kinv
        self.shape = tuple(shape)

    def __call__(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z, F z)`` for the residual ``r``."""
        z_hat = rfftn(r)
        z_hat *= self.kinv
        return irfftn(z_hat, s=self.shape).astype(np.float32, copy=False), z_hat


def conjugate_gradient(
    apply_a: Callable[..., object],
    b: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    precond: Callable[[np.ndarray], np.ndarray] | None = None,
    kspace: KSpacePreconditioner | None = None,
) -> np.ndarray:
    """Solve ``A x = b`` (``A`` symmetric positive definite) by conjugate gradients from 0.

    Hestenes & Stiefel 1952; preconditioned form as in Shewchuk, "An introduction to the
    conjugate gradient method without the agonizing pain" (1994), B2. All vectors float32,
    updated in place (BLAS ``axpy``/``dot``); no temporary volume per iteration beyond what
    ``apply_a`` and the preconditioner allocate.

    Parameters
    ----------
    apply_a : callable ``(p, out) -> None``, or ``(p, out, p_hat)`` with ``kspace``
        Writes ``A p`` into ``out``; with ``kspace`` it also gets ``p_hat``, the half
        spectrum ``rfftn(p)`` (complex64, do not modify).
    b : ndarray (float32)
        Right-hand side (not modified).
    max_iter : int
        Maximum number of iterations (each one ``apply_a``).
    tol : float
        Stop when ``||r|| <= tol ||b||`` (residual of the unpreconditioned system).
    precond : callable ``r -> z`` or None, default None
        Applies an approximation of ``A^-1`` (symmetric positive definite); None: plain CG.
    kspace : KSpacePreconditioner or None, default None
        A k-space preconditioner instead of ``precond`` (not both): the same iterates, and
        the search direction's spectrum passed to ``apply_a``.

    Returns
    -------
    ndarray (float32)
        The iterate after the last iteration; also stops early when ``p^T A p <= 0``.
    """
    if precond is not None and kspace is not None:
        raise ValueError("give precond or kspace, not both")
    x = np.zeros_like(b, dtype=np.float32)
    r = np.array(b, dtype=np.float32, copy=True)
    p_hat = None
    if kspace is not None:
        z, p_hat = kspace(r)  # a fresh spectrum: the solver updates it in place
    else:
        z = precond(r) if precond is not None else r
    p = np.array(z, dtype=np.float32, copy=True)
    ap = np.empty_like(r)
    plain = precond is None and kspace is None
    rz = dot(r, z)
    rr = rz if plain else dot(r, r)
    stop = float(tol) ** 2 * rr
    for _ in range(int(max_iter)):
        if rz == 0.0 or rr <= stop:
            break
        if p_hat is None:
            apply_a(p, ap)
        else:
            apply_a(p, ap, p_hat)
        p_ap = dot(p, ap)
        if p_ap <= 0.0:
            break
        alpha = rz / p_ap
        axpy(alpha, p, x)  # x += alpha p
        axpy(-alpha, ap, r)  # r -= alpha A p
        if kspace is not None:
            z, z_hat = kspace(r)
        else:
            z = precond(r) if precond is not None else r
        rz_new = dot(r, z)
        rr = rz_new if plain else dot(r, r)
        beta = np.float32(rz_new / rz)
        p *= beta  # p = z + beta p
        p += z
        if p_hat is not None:
            p_hat *= beta  # and its spectrum, by linearity
            p_hat += z_hat
        rz = rz_new
    return x
