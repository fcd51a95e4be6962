"""Fine and output voxel grids of the realistic simulator, and the maps between them.

The realistic phantom lives on a *fine* grid ``factor`` times finer than the acquired
(*output*) grid along each axis and covering exactly the same field of view: output voxel
``i`` is the block of fine voxels ``factor * i ... factor * i + factor - 1``, whose centres
average to the output voxel centre. Two maps bring fine data to the output grid:

* :func:`kspace_truncate`: what an MRI scanner does to the complex signal. The fine image's
  discrete Fourier transform is cut to the central ``out_shape`` frequencies (those the
  acquisition samples) and transformed back; a linear phase puts the samples on the output
  voxel centres, and the result is scaled so that a constant stays the same constant.
  Intra-voxel dephasing, partial volume and Gibbs ringing follow from it, as in the QSM
  challenge 2.0 simulation (Marques et al., MRM 2021).
* :func:`block_average`: the mean over each output voxel's block of fine voxels; the truth
  maps (susceptibility, fields) of the realistic simulator are defined this way.

All functions are numpy/scipy only and deterministic; lengths are in voxels unless a name
says ``_mm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsm_bids.core.kernels import fftn, ifftn


def fine_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Voxel-to-world affine of the grid ``factor`` times finer over the same field of view.

    Parameters
    ----------
    affine : (4, 4) array
        Affine of the output grid (world mm).
    factor : int
        Subdivision of each output voxel along each axis (>= 1).

    Returns
    -------
    float64 (4, 4)
        Affine whose fine voxel ``j`` sits at output voxel coordinate ``(j - (f-1)/2) / f``,
        so that each block of ``factor**3`` fine voxels is centred on its output voxel.
    """
    f = int(factor)
    if f < 1:
        raise ValueError("factor must be >= 1")
    a = np.asarray(affine, dtype=np.float64)
    out = a.copy()
    out[:3, :3] = a[:3, :3] / f
    out[:3, 3] = a[:3, 3] - a[:3, :3] @ np.full(3, (f - 1) / (2.0 * f))
    return out


def resample_linear(x: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Separable (tensor-product) linear interpolation at per-axis sample positions.

    Parameters
    ----------
    x : 3D array
        Samples on an integer grid.
    positions : three 1D float arrays
        Fractional indices along each axis at which to interpolate; outside ``[0, n-1]`` the
        end intervals are extrapolated linearly (exact for affine functions such as world
        coordinates).

    Returns
    -------
    float32 array of shape ``(len(p0), len(p1), len(p2))``
    """
    out = np.asarray(x, dtype=np.float32)
    for axis, pos in enumerate(positions):
        n = out.shape[axis]
        p = np.asarray(pos, dtype=np.float64)
        if n == 1:
            out = np.repeat(out, p.size, axis=axis)
            continue
        i0 = np.clip(np.floor(p).astype(np.int64), 0, n - 2)
        w = (p - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = p.size
        w = w.reshape(shape)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i0 + 1, axis=axis)
        out = a + w * (b - a)
    return out


def upsample_linear(x: np.ndarray, factor: int) -> np.ndarray:
    """A smooth output-grid map evaluated on the fine grid (linear interpolation).

    Fine voxel ``j`` is interpolated at output coordinate ``(j - (factor-1)/2) / factor``
    (see :func:`fine_affine`); meant for smooth maps (coordinates, coil bias, phase offset).
    """
    f = int(factor)
    pos = [(np.arange(f * n) - (f - 1) / 2.0) / f for n in np.shape(x)]
    return resample_linear(x, pos)


def _check_blocks(shape: Sequence[int], factor: int) -> tuple[int, int, int]:
    f = int(factor)
    if f < 1 or any(int(n) % f for n in shape):
        raise ValueError(f"shape {tuple(shape)} is not a whole number of {f}-voxel blocks")
    return tuple(int(n) // f for n in shape)  # type: ignore[return-value]


def block_average(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over each ``factor``^3 block of fine voxels (the output-grid value).

    Parameters
    ----------
    x : 3D array
        Fine-grid map whose shape is a multiple of ``factor`` along each axis.
    factor : int
        Block edge (fine voxels).

    Returns
    -------
    float32 array of the output shape (``x.shape // factor``).
    """
    n = _check_blocks(x.shape, factor)
    f = int(factor)
    if f == 1:
        return np.asarray(x, dtype=np.float32).copy()
    v = np.asarray(x).reshape(n[0], f, n[1], f, n[2], f)
    return v.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def block_mode(labels: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent label of each ``factor``^3 block (ties: the smaller label).

    Parameters
    ----------
    labels : 3D integer array
        Fine-grid segmentation (non-negative labels).
    factor : int
        Block edge (fine voxels).

    Returns
    -------
    int16 array of the output shape.
    """
    n = _check_blocks(labels.shape, factor)
    f = int(factor)
    lab = np.asarray(labels)
    if f == 1:
        return lab.astype(np.int16)
    best = np.zeros(n, dtype=np.int16)
    best_count = np.full(n, -1, dtype=np.int16)
    for value in np.unique(lab):
        count = (lab == value).reshape(n[0], f, n[1], f, n[2], f).sum(axis=(1, 3, 5))
        count = count.astype(np.int16)
        better = count > best_count
        best[better] = value
        best_count[better] = count[better]
    return best


def _axis_indices(n_fine: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine-spectrum indices of the central ``n_out`` frequencies (FFT order) and the
    integer frequencies themselves."""
    q = np.rint(np.fft.fftfreq(n_out) * n_out).astype(np.int64)  # integer frequencies
    return np.mod(q, n_fine), q


def kspace_truncate(x: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Bring a fine-grid image to a coarser grid by k-space truncation (what MRI samples).

    The DFT of ``x`` is restricted to the central ``out_shape`` frequencies (for an even
    size ``n`` the frequencies ``-n/2 ... n/2 - 1``, as an acquisition samples them),
    multiplied by the linear phase that moves the samples from fine voxel ``f i`` to the
    block centre ``f i + (f-1)/2`` (:func:`fine_affine`), inverse transformed and scaled by
    ``prod(out_shape) / prod(x.shape)``: a constant image keeps its value and the result
    is the band-limited (sinc) interpolant of the truncated spectrum at the output voxel
    centres.

    Parameters
    ----------
    x : 3D real or complex array
        Fine-grid image (e.g. one echo of the complex signal).
    out_shape : 3 ints
        Output grid shape; ``x.shape`` must be a whole multiple of it (same factor on every
        axis is not required).

    Returns
    -------
    complex64 array of ``out_shape``.
    """
    fine = tuple(int(n) for n in x.shape)
    out = tuple(int(n) for n in out_shape)
    if len(out) != 3 or any(n < 1 or m % n for m, n in zip(fine, out, strict=True)):
        raise ValueError(f"fine shape {fine} is not a whole multiple of {out}")
    spec = fftn(np.asarray(x, dtype=np.complex64))
    idx, shifts = [], []
    for m, n in zip(fine, out, strict=True):
        i, q = _axis_indices(m, n)
        f = m // n
        idx.append(i)
        # sample at fine position f*i + (f-1)/2: phase exp(2 pi i q s / m), s = (f-1)/2
        shifts.append(np.exp(2j * np.pi * q * ((f - 1) / 2.0) / m).astype(np.complex64))
    cut = spec[np.ix_(*idx)]
    del spec
    cut *= shifts[0][:, None, None] * shifts[1][None, :, None] * shifts[2][None, None, :]
    res = ifftn(cut)
    res *= np.float32(np.prod(out) / np.prod(fine))
    return res.astype(np.complex64, copy=False)
