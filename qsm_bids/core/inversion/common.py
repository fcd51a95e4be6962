"""Building blocks shared by the dipole inversions: the masked field on the padded
bounding box of the mask, data weights, finite-difference gradients and their symbols,
conjugate gradients, and the phase scale of the nonlinear data terms.

One definition each; the algorithms (one file per method in this package) import them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from qsm_bids.core.kernels import MaskBox, laplacian_kernel
from qsm_bids.core.linalg import dot
from qsm_bids.core.stencils import axis_slices

#: Percentile of ``|field|`` that :func:`phase_scale` maps to 1 rad (automatic scale).
PHASE_PERCENTILE = 99.9


def prepare(
    local_field: np.ndarray, mask: np.ndarray, *, margin: int = 8
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], MaskBox]:
    """Validate inputs; return the masked field on the padded bounding box of the mask.

    Returns ``(field_padded float32, mask_padded bool, padded_shape, box)``.
    """
    f = np.asarray(local_field, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"local_field {f.shape} and mask {m.shape} must be equal 3D shapes")
    box = MaskBox(m, margin)
    fp = box.embed(np.where(m, f, np.float32(0)))
    mp = box.embed(m.astype(np.float32)) > 0
    return fp, mp, box.shape, box


def weights_sq(weights: np.ndarray | None, mask: np.ndarray, box: MaskBox) -> np.ndarray:
    """Squared data weights ``W^2`` on the box: zero outside ``mask``; ``|weights|``
    normalised to mean 1 inside it, or the mask itself when ``weights`` is None."""
    inside = np.asarray(mask).astype(bool)
    if weights is None:
        return box.embed(inside.astype(np.float32))
    wp = np.asarray(weights, dtype=np.float32)
    if wp.shape != inside.shape:
        raise ValueError(f"weights {wp.shape} must have the shape of mask {inside.shape}")
    wp = np.where(inside, np.abs(wp), np.float32(0))
    mean = float(wp[inside].mean()) if np.any(inside) else 0.0
    return box.embed(wp / np.float32(mean if mean > 0 else 1.0)) ** 2


def finish(chi_padded: np.ndarray, mask: np.ndarray, box: MaskBox) -> np.ndarray:
    """Back to the input grid, zero outside ``mask``, float32."""
    chi = box.extract(np.asarray(chi_padded, dtype=np.float32))
    return np.where(np.asarray(mask).astype(bool), chi, np.float32(0)).astype(np.float32)


def grad_scale(voxel_size: Sequence[float]) -> np.ndarray:
    """Finite-difference step per axis in units of the geometric-mean voxel size.

    Gradients are taken per "mean voxel", so regularisation weights keep their meaning
    across resolutions for piecewise-constant maps while anisotropy is still respected.
    """
    v = np.asarray(voxel_size, dtype=np.float64)
    if v.shape != (3,) or np.any(v <= 0):
        raise ValueError(f"voxel_size must be 3 positive floats, got {voxel_size}")
    return v / np.exp(np.log(v).mean())


def grad_symbol_sq(shape: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """``|G(k)|^2`` of the periodic forward-difference gradient (rfftn layout, float32):
    minus the discrete Laplacian's symbol, with steps in geometric-mean voxels."""
    return -laplacian_kernel(shape, grad_scale(voxel_size), real=True)


def edge(axis: int, index: int) -> tuple[slice | int, ...]:
    """Index tuple selecting the plane ``index`` along ``axis``."""
    sel: list[slice | int] = [slice(None)] * 3
    sel[axis] = index
    return tuple(sel)


def grad_add(x: np.ndarray, inv_h: Sequence[float], out: Sequence[np.ndarray]) -> None:
    """``out[a] += G_a x``: periodic forward differences divided by the step ``h_a``."""
    for a in range(3):
        hi, lo = axis_slices(a)
        o = out[a]
        o[lo] += (x[hi] - x[lo]) * np.float32(inv_h[a])
        o[edge(a, -1)] += (x[edge(a, 0)] - x[edge(a, -1)]) * np.float32(inv_h[a])


def grad_adjoint(
    q: Sequence[np.ndarray], inv_h: Sequence[float], out: np.ndarray, tmp: np.ndarray
) -> np.ndarray:
    """``out = sum_a G_a^T q_a`` (negative backward-difference divergence), periodic."""
    out.fill(0)
    for a in range(3):
        hi, lo = axis_slices(a)
        np.subtract(q[a][lo], q[a][hi], out=tmp[hi])
        np.subtract(q[a][edge(a, -1)], q[a][edge(a, 0)], out=tmp[edge(a, 0)])
        tmp *= np.float32(inv_h[a])
        out += tmp
    return out


def cg(
    op: Callable[[np.ndarray], np.ndarray], b: np.ndarray, n_iter: int, tol: float
) -> np.ndarray:
    """Conjugate gradients for ``op(x) = b`` (``op`` symmetric positive semi-definite),
    started from zero, at most ``n_iter`` iterations, stopping when ``||r|| <= tol ||b||``.
    Returns float32."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = dot(r, r)
    stop = float(tol) ** 2 * rs
    for _ in range(int(n_iter)):
        if rs <= stop or rs == 0.0:
            break
        q = op(p)
        pq = dot(p, q)
        if pq <= 0.0:
            break
        alpha = np.float32(rs / pq)
        x += alpha * p
        r -= alpha * q
        rs_new = dot(r, r)
        p *= np.float32(rs_new / rs)
        p += r
        rs = rs_new
    return x


def cg_normal(
    apply_a: Callable[[np.ndarray], np.ndarray],
    w2: np.ndarray,
    f: np.ndarray,
    n_iter: int,
    tol: float,
) -> np.ndarray:
    """Weighted least squares ``min ||W (A x - f)||^2`` for a symmetric real ``A``.

    Conjugate gradients on the normal equations ``A W^2 A x = A W^2 f`` started from zero
    (CGLS; the same Krylov iterates as LSQR in exact arithmetic), at most ``n_iter``
    iterations, stopping when the normal-equation residual falls below ``tol`` times its
    initial value. Early stopping regularises the solution. Returns float32.
    """
    return cg(lambda p: apply_a(w2 * apply_a(p)), apply_a(w2 * f), n_iter, tol)


def resolve_phase_scale(field: np.ndarray, w2: np.ndarray, phase_scale: float) -> float:
    """Radians per ppm used by the nonlinear data terms.

    ``phase_scale > 0`` is used as given (e.g. ``2 pi gamma_bar B0 TE``); ``0`` means
    automatic: the 99.9th percentile of ``|field|`` over the voxels of positive weight is
    mapped to 1 rad, so that nearly all the phase lies within +-1 rad (no wraps) and the
    result scales linearly with the input field.
    """
    if float(phase_scale) < 0:
        raise ValueError(f"phase_scale must be >= 0, got {phase_scale}")
    if float(phase_scale) > 0:
        return float(phase_scale)
    vals = np.abs(field[w2 > 0])
    ref = float(np.percentile(vals, PHASE_PERCENTILE)) if vals.size else 0.0
    return 1.0 / ref if ref > 0 else 1.0
