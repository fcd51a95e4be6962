"""Laplacian (least-squares) phase unwrapping.

Follows Schofield MA, Zhu Y. "Fast phase unwrapping algorithm for interferometric
applications". Opt Lett 2003;28:1194-1196: the Laplacian of the true phase is computable from
the wrapped phase, and inverting the Laplacian in Fourier space returns a smooth unwrapped
phase. Two refinements, both more accurate than the original ``cos*lap(sin) - sin*lap(cos)``
formula (which is only the small-difference limit):

* The discrete Laplacian is formed from *wrapped neighbour differences*,
  ``sum_d D_d^T wrap(D_d phase)``, which equals the discrete Laplacian of the true phase
  wherever neighbouring true values differ by less than pi (Ghiglia DC, Romero LA, J Opt Soc Am
  A 1994;11:107-117, unweighted least squares).
* The Poisson problem is solved with mirror (Neumann) boundaries, i.e. on the grid mirrored
  along every axis, so there is no wrap-around and a linear phase ramp is recovered exactly.
  The FFT of the mirrored grid reduces to a type-II DCT; its eigenvalues are those of
  :func:`qsm_bids.core.kernels.laplacian_kernel` on the doubled grid.
* With a mask, only the differences inside the mask enter (weighted least squares with
  Neumann boundaries on the mask surface, Ghiglia & Romero 1994), solved by conjugate
  gradients preconditioned by the mirrored-box solve above. Without it, the noise outside the
  object (or zeroing the gradients there) biases the phase inside.

The result is smooth and not congruent with the wrapped data;
:func:`make_congruent` snaps a smooth estimate onto the nearest ``phase + 2*pi*k``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage

from qsm_bids.core.kernels import fft_workers, laplacian_kernel
from qsm_bids.core.linalg import axpy
from qsm_bids.core.phase import wrap_to_pi

TWO_PI = np.float32(2.0 * np.pi)


def _neumann_eigenvalues(shape: tuple[int, ...], voxel_size: tuple[float, ...]) -> np.ndarray:
    """Eigenvalues (>= 0, 1/mm^2) of ``-Laplacian`` with Neumann boundaries (type-II DCT basis).

    The DCT-II of length n diagonalises the Laplacian of the grid mirrored to length 2n; its
    eigenvalues are the first n entries of :func:`laplacian_kernel` on the doubled grid
    (computed axis by axis, which keeps the memory at the size of the volume).
    """
    n0, n1, n2 = shape
    lam = -laplacian_kernel((2 * n0, 1, 1), voxel_size)[:n0]
    lam = lam - laplacian_kernel((1, 2 * n1, 1), voxel_size)[:, :n1]
    lam = lam - laplacian_kernel((1, 1, 2 * n2), voxel_size)[:, :, :n2]
    return lam.astype(np.float32)


def _poisson_neumann(rhs: np.ndarray, eig: np.ndarray) -> np.ndarray:
    """Solve ``-Laplacian u = rhs`` on the box with Neumann boundaries (zero-mean u)."""
    workers = fft_workers()
    spec = scipy.fft.dctn(rhs, type=2, norm="ortho", workers=workers)
    with np.errstate(divide="ignore", invalid="ignore"):
        spec = spec / eig
    spec[0, 0, 0] = 0.0
    return scipy.fft.idctn(spec, type=2, norm="ortho", workers=workers).astype(np.float32)


def _edge_masks(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis: True where both ends of the forward edge lie in the mask."""
    return [
        mask[:-1] & mask[1:],
        mask[:, :-1] & mask[:, 1:],
        mask[:, :, :-1] & mask[:, :, 1:],
    ]


def _diff(u: np.ndarray, axis: int) -> np.ndarray:
    return np.diff(u, axis=axis)


def _div_t(g: np.ndarray, axis: int, shape: tuple[int, ...]) -> np.ndarray:
    """``D^T g`` for the forward difference ``D`` along ``axis`` (g is one shorter)."""
    out = np.zeros(shape, dtype=np.float32)
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    out[tuple(lo)] -= g
    out[tuple(hi)] += g
    return out


def _normal_operator(u: np.ndarray, w: list[np.ndarray], inv_d2: tuple[float, ...]) -> np.ndarray:
    """``sum_d D_d^T W_d D_d u / voxel_d^2`` (the weighted ``-Laplacian``)."""
    out = np.zeros(u.shape, dtype=np.float32)
    for ax in range(3):
        out += _div_t(_diff(u, ax) * w[ax] * np.float32(inv_d2[ax]), ax, u.shape)
    return out


def _component_offsets(phase: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per connected component: shift ``estimate`` by the circular mean of ``phase - estimate``
    so that it agrees with the wrapped phase modulo 2*pi (returns the shifted estimate)."""
    labels, n = scipy.ndimage.label(mask)
    if n == 0:
        return estimate
    z = np.exp(1j * (phase[mask] - estimate[mask]).astype(np.float64))
    lab = labels[mask]
    re = np.bincount(lab, weights=z.real, minlength=n + 1)
    im = np.bincount(lab, weights=z.imag, minlength=n + 1)
    offset = np.arctan2(im, re).astype(np.float32)
    out = estimate.copy()
    out[mask] += offset[lab]
    return out


def make_congruent(
    phase: np.ndarray,
    estimate: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    align_offset: bool = True,
) -> np.ndarray:
    """Snap a smooth unwrapped estimate onto the wrapped data: ``phase + 2*pi*k``.

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase (rad).
    estimate : (X, Y, Z) array
        Smooth unwrapped estimate (rad), e.g. from :func:`laplacian_unwrap_3d`.
    mask : (X, Y, Z) bool array or None, default None
        Voxels to process; outside, the wrapped ``phase`` is returned. None: the whole grid.
    align_offset : bool, default True
        First shift ``estimate``, per 6-connected component of the mask, by the circular mean
        of ``phase - estimate`` (a least-squares solution carries an arbitrary constant).

    Returns
    -------
    (X, Y, Z) float32 array
        ``phase + 2*pi*round((estimate - phase) / (2*pi))`` in the mask: exactly congruent
        with the wrapped data, and equal to the true phase wherever the estimate is within pi
        of it.
    """
    p = np.asarray(phase, dtype=np.float32)
    e = np.asarray(estimate, dtype=np.float32)
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if align_offset:
        e = _component_offsets(p, e, m)
    k = np.rint((e - p) / TWO_PI)
    return np.where(m, p + TWO_PI * k, p).astype(np.float32)


def laplacian_unwrap_3d(
    phase: np.ndarray,
    voxel_size: tuple[float, float, float],
    *,
    mask: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> np.ndarray:
    """Laplacian (least-squares) unwrapping of one 3D phase volume (Schofield & Zhu 2003).

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase (rad).
    voxel_size : 3 floats
        Voxel size (mm); weighs the differences along each axis by ``1 / voxel^2``.
    mask : (X, Y, Z) bool array or None, default None
        Only phase differences between two mask voxels are used (Neumann boundary on the
        mask surface; solved by preconditioned conjugate gradients on the mask's bounding
        box). None: one direct solve over the whole grid (mirror boundaries).
    max_iter : int, default 100
        Maximum conjugate-gradient iterations (masked case).
    tol : float, default 1e-4
        Relative residual ``||r|| / ||b||`` at which conjugate gradients stop.

    Returns
    -------
    (X, Y, Z) float32 array
        Smooth unwrapped phase (rad) with its constant (per connected component of the mask)
        chosen to agree with the wrapped phase in circular mean; exact up to that constant
        when no true neighbour difference exceeds pi and the data are consistent (no
        residues). Outside the mask the wrapped input is returned.
    """
    p = np.asarray(phase, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"phase must be 3D, got shape {p.shape}")
    vs = tuple(float(v) for v in voxel_size)
    inv_d2 = tuple(1.0 / v**2 for v in vs)

    if mask is None:
        # Step 1 (Schofield & Zhu): Laplacian of the true phase from wrapped differences
        rhs = np.zeros(p.shape, dtype=np.float32)
        for ax in range(3):
            rhs += _div_t(wrap_to_pi(_diff(p, ax)) * np.float32(inv_d2[ax]), ax, p.shape)
        # Step 2: invert the Laplacian (mirror boundaries: type-II DCT)
        est = _poisson_neumann(rhs, _neumann_eigenvalues(p.shape, vs))
        return _component_offsets(p, est, np.ones(p.shape, bool))

    m = np.asarray(mask, dtype=bool)
    if m.shape != p.shape:
        raise ValueError(f"mask shape {m.shape} != phase shape {p.shape}")
    out = p.copy()
    if not m.any():
        return out
    # crop to the mask's bounding box (one voxel margin)
    idx = np.nonzero(m)
    box = tuple(
        slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n))
        for i, n in zip(idx, p.shape, strict=True)
    )
    pb, mb = p[box], m[box]
    shape = pb.shape
    w = [e.astype(np.float32) for e in _edge_masks(mb)]
    # Step 1: weighted Laplacian of the true phase from wrapped differences inside the mask
    b = np.zeros(shape, dtype=np.float32)
    for ax in range(3):
        b += _div_t(wrap_to_pi(_diff(pb, ax)) * w[ax] * np.float32(inv_d2[ax]), ax, shape)
    eig = _neumann_eigenvalues(shape, vs)
    mf = mb.astype(np.float32)

    # Step 2: solve the masked Poisson problem by PCG (preconditioner: box Neumann solve)
    def precond(r: np.ndarray) -> np.ndarray:
        return _poisson_neumann(r, eig) * mf

    x = precond(b)
    r = b - _normal_operator(x, w, inv_d2)
    z = precond(r)
    d = z.copy()
    rz = float(np.vdot(r, z))
    bnorm = float(np.linalg.norm(b)) or 1.0
    for _ in range(int(max_iter)):
        if float(np.linalg.norm(r)) <= tol * bnorm:
            break
        ad = _normal_operator(d, w, inv_d2)
        dad = float(np.vdot(d, ad))
        if dad <= 0.0:
            break
        alpha = np.float32(rz / dad)
        axpy(alpha, d, x)  # x += alpha d, in place
        axpy(-alpha, ad, r)  # r -= alpha A d
        z = precond(r)
        rz_new = float(np.vdot(r, z))
        d *= np.float32(rz_new / rz)
        d += z
        rz = rz_new
    est = _component_offsets(pb, x, mb)
    out[box] = np.where(mb, est, pb)
    return out
