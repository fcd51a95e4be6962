"""In-place vector operations for the iterative solvers (conjugate gradients) of qsm_bids:
no temporary volume per iteration."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two float32 arrays (BLAS, returned as a Python float)."""
    return float(np.dot(a.ravel(), b.ravel()))


def axpy(alpha: float | np.float32, x: np.ndarray, y: np.ndarray) -> None:
    """In place ``y += alpha * x`` without a temporary array."""
    blas_axpy = scipy.linalg.blas.get_blas_funcs("axpy", (x, y))
    blas_axpy(x.ravel(), y.ravel(), a=float(alpha))
