"""Finite-difference operators: the 7-point Laplacian (numpy), and the weighted
gradient-divergence fused into one pass over the grid (numba, multithreaded).

The iterative inversions apply ``G^T R G`` (a weighted, periodic forward-difference
gradient followed by its adjoint) several times per iteration. Written with numpy it takes
nine passes over the volume and three scratch volumes; here it is one pass with no
scratch, on :func:`qsm_bids.core.kernels.fft_workers` threads. The numpy composition
(:func:`qsm_bids.core.inversion.common.grad_add` and ``grad_adjoint``) stays the
reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from qsm_bids.core.kernels import fft_workers

__all__ = [
    "axis_slices",
    "laplacian",
    "neighbour_sum",
    "numba_threads",
    "set_threads",
    "weighted_div_grad",
]


def axis_slices(axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples selecting ``[1:]`` and ``[:-1]`` along ``axis`` of a 3D array."""
    hi = [slice(None)] * 3
    lo = [slice(None)] * 3
    hi[axis] = slice(1, None)
    lo[axis] = slice(None, -1)
    return tuple(hi), tuple(lo)


def neighbour_sum(u: np.ndarray, w: Sequence[float]) -> np.ndarray:
    """``sum_d w_d (u[x + e_d] + u[x - e_d])`` with zero beyond the array."""
    out = np.zeros_like(u)
    for axis in range(3):
        hi, lo = axis_slices(axis)
        wd = u.dtype.type(w[axis])
        out[hi] += wd * u[lo]
        out[lo] += wd * u[hi]
    return out


def laplacian(f: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """7-point Laplacian of ``f`` (unit of ``f`` per mm^2), zero-extended beyond the array.

    ``voxel_size`` in mm along each axis.
    """
    h2 = tuple(1.0 / float(v) ** 2 for v in voxel_size)
    return neighbour_sum(f, h2) - f.dtype.type(2.0 * sum(h2)) * f


def numba_threads() -> int:
    """numba threads for the kernels: :func:`fft_workers` (``QSM_BIDS_NUM_THREADS``; all
    cores when unset), bounded by the threads numba started with."""
    n = fft_workers()
    limit = int(numba.config.NUMBA_NUM_THREADS)
    return limit if n <= 0 else max(1, min(n, limit))


def set_threads() -> int:
    """Set numba's thread count to :func:`numba_threads`; returns it."""
    n = numba_threads()
    numba.set_num_threads(n)
    return n


@numba.njit(cache=True, parallel=True, nogil=True)
def _div_grad_kernel(x, r0, r1, r2, h0, h1, h2, out):  # pragma: no cover - compiled
    nx, ny, nz = x.shape
    for i in numba.prange(nx):
        im = i - 1 if i > 0 else nx - 1
        ip = i + 1 if i < nx - 1 else 0
        for j in range(ny):
            jm = j - 1 if j > 0 else ny - 1
            jp = j + 1 if j < ny - 1 else 0
            for k in range(nz):
                km = k - 1 if k > 0 else nz - 1
                kp = k + 1 if k < nz - 1 else 0
                xc = x[i, j, k]
                # G_a^T q at the voxel = h_a (q_a(voxel - e_a) - q_a(voxel)), with
                # q_a = r_a h_a (x(voxel + e_a) - x(voxel)): periodic forward differences
                a = r0[im, j, k] * (xc - x[im, j, k]) - r0[i, j, k] * (x[ip, j, k] - xc)
                v = h0 * h0 * a
                a = r1[i, jm, k] * (xc - x[i, jm, k]) - r1[i, j, k] * (x[i, jp, k] - xc)
                v += h1 * h1 * a
                a = r2[i, j, km] * (xc - x[i, j, km]) - r2[i, j, k] * (x[i, j, kp] - xc)
                v += h2 * h2 * a
                out[i, j, k] = v


def weighted_div_grad(
    x: np.ndarray, r: Sequence[np.ndarray], inv_h: Sequence[float], out: np.ndarray
) -> np.ndarray:
    """``out = G^T R G x``: weighted periodic forward-difference gradient and its adjoint.

    Parameters
    ----------
    x : (X, Y, Z) float32 array
        The volume (any unit).
    r : 3 (X, Y, Z) float32 arrays
        Per-axis weights of the gradient components (``R``), non-negative.
    inv_h : 3 floats
        Inverse step along each axis (``G_a x = (x(. + e_a) - x) * inv_h[a]``).
    out : (X, Y, Z) float32 array
        Written in place (must not be ``x``) and returned.

    Returns
    -------
    (X, Y, Z) float32 array
        ``sum_a G_a^T (r_a G_a x)`` in the unit of ``x`` times ``inv_h^2``.
    """
    if out is x:
        raise ValueError("out must not be x")
    set_threads()
    h = [np.float32(v) for v in inv_h]
    _div_grad_kernel(x, r[0], r[1], r[2], h[0], h[1], h[2], out)
    return out
