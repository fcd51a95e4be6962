"""k-space grids, the dipole and spherical-mean-value kernels, B0 direction and FFT helpers.

Every FFT-based algorithm in :mod:`qsm_bids.core` builds its kernels here, once per call,
and uses :func:`fftn` / :func:`ifftn` / :func:`rfftn` / :func:`irfftn`, which run on
:func:`fft_workers` threads.

Conventions
-----------
* Arrays are indexed ``[i, j, k]`` in voxel space; ``voxel_size`` is the voxel edge length
  along each array axis in mm.
* ``b0_dir`` is the unit vector of the main field in voxel-index space (see
  :func:`b0_direction`); ``(0, 0, 1)`` for an axial acquisition.
* Spatial frequencies are in cycles/mm, from ``fftfreq(n, d=voxel_size)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.fft

# --------------------------------------------------------------------------------------
# FFT helpers
# --------------------------------------------------------------------------------------


def fft_workers() -> int:
    """Number of threads for ``scipy.fft``.

    Read from the environment variable ``QSM_BIDS_NUM_THREADS`` (set by the nipype
    interfaces from the node's ``n_procs``); defaults to all cores (``-1``).
    """
    value = os.environ.get("QSM_BIDS_NUM_THREADS", "")
    try:
        n = int(value)
    except ValueError:
        return -1
    return n if n > 0 else -1


def fftn(x: np.ndarray, s: Sequence[int] | None = None) -> np.ndarray:
    """Complex n-D FFT over all axes of a 3D array (threads: :func:`fft_workers`)."""
    return scipy.fft.fftn(x, s=s, workers=fft_workers())


def ifftn(x: np.ndarray, s: Sequence[int] | None = None) -> np.ndarray:
    """Inverse complex n-D FFT over all axes (threads: :func:`fft_workers`)."""
    return scipy.fft.ifftn(x, s=s, workers=fft_workers())


def rfftn(x: np.ndarray, s: Sequence[int] | None = None) -> np.ndarray:
    """Real-input n-D FFT; the last axis is halved (threads: :func:`fft_workers`)."""
    return scipy.fft.rfftn(x, s=s, workers=fft_workers())


def irfftn(x: np.ndarray, s: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`rfftn`; ``s`` is the real-space shape (required)."""
    return scipy.fft.irfftn(x, s=s, workers=fft_workers())


def fast_shape(
    shape: Sequence[int], min_pad: Sequence[int] | int = 0, *, complex_radices: bool = True
) -> tuple[int, ...]:
    """Smallest FFT-friendly shape at least ``shape + 2 * min_pad`` along each axis.

    With ``complex_radices`` (default) every axis but the last may also have the factors 7
    and 11, for which pocketfft's complex FFTs have their own passes: a real 3D FFT
    transforms only the last axis as real data, so only that axis is kept to the 2-3-5
    sizes of pocketfft's fast real transforms. The tighter grid is about 10 % smaller and
    up to 30 % faster than the all-2-3-5 one (e.g. 165x200x175 against 180x200x180 for
    a 1 mm brain; benchmarks/RESULTS.md). ``complex_radices=False`` gives the 2-3-5 size
    on every axis (the simulator keeps it, so its phantoms do not change).
    """
    pads = np.broadcast_to(np.asarray(min_pad, dtype=int), (len(shape),))
    last = len(shape) - 1
    return tuple(
        scipy.fft.next_fast_len(int(n + 2 * p), real=(not complex_radices) or axis == last)
        for axis, (n, p) in enumerate(zip(shape, pads, strict=True))
    )


def pad_to(x: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad ``x`` symmetrically to ``shape``; returns the padded array and the slices
    that crop it back (``padded[slices]`` has the shape of ``x``)."""
    before = [(n - s) // 2 for n, s in zip(shape, x.shape, strict=True)]
    pad = [(b, n - s - b) for b, n, s in zip(before, shape, x.shape, strict=True)]
    if any(p[0] < 0 or p[1] < 0 for p in pad):
        raise ValueError(f"cannot pad shape {x.shape} to smaller shape {tuple(shape)}")
    slices = tuple(slice(b, b + s) for b, s in zip(before, x.shape, strict=True))
    return np.pad(x, pad), slices


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` (non-zero voxels) grown by ``margin`` voxels
    (one number, or one per axis) and clipped to the array; the whole array when ``mask``
    is empty."""
    m = np.asarray(mask) != 0
    pads = np.broadcast_to(np.asarray(margin, dtype=int), (m.ndim,))
    out = []
    for axis in range(m.ndim):
        other = tuple(a for a in range(m.ndim) if a != axis)
        nz = np.flatnonzero(m.any(axis=other))
        if nz.size == 0:
            return tuple(slice(0, n) for n in m.shape)
        lo = max(0, int(nz[0]) - int(pads[axis]))
        out.append(slice(lo, min(m.shape[axis], int(nz[-1]) + 1 + int(pads[axis]))))
    return tuple(out)


class MaskBox:
    """The mask's bounding box plus a margin, on an FFT-friendly grid.

    The iterative FFT methods (dipole inversions, PDF) run on this box, not on the whole
    field of view: a smaller grid where the brain does not fill the FOV, and always at
    least ``margin`` voxels of zero padding around the mask, so that the periodic FFT does
    not couple opposite sides of a brain that touches the edge of the FOV (slabs, tight
    crops).
    """

    def __init__(self, mask: np.ndarray, margin: int) -> None:
        self.full_shape = mask.shape
        self.src = bounding_box(mask)
        lo = [sl.start for sl in self.src]
        hi = [sl.stop for sl in self.src]
        self.shape = fast_shape([b - a for a, b in zip(lo, hi, strict=True)], margin)
        start = [(n - (b - a)) // 2 for n, a, b in zip(self.shape, lo, hi, strict=True)]
        self.dst = tuple(slice(s0, s0 + b - a) for s0, a, b in zip(start, lo, hi, strict=True))

    def embed(self, x: np.ndarray) -> np.ndarray:
        """``x`` (full FOV) cut to the box and zero-padded to :attr:`shape` (float32)."""
        out = np.zeros(self.shape, np.float32)
        out[self.dst] = x[self.src]
        return out

    def extract(self, xp: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`embed`: a full-FOV float32 array, zero outside the box."""
        out = np.zeros(self.full_shape, np.float32)
        out[self.src] = xp[self.dst]
        return out


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm along each array axis, from a 4x4 NIfTI affine."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return tuple(float(v) for v in np.sqrt((a**2).sum(axis=0)))  # type: ignore[return-value]


def b0_direction(affine: np.ndarray, b0_world: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 direction in voxel-index space.

    Parameters
    ----------
    affine : (4, 4) array
        NIfTI voxel-to-world (RAS+ mm) affine of the acquisition.
    b0_world : 3 floats, default (0, 0, 1)
        B0 direction in world (scanner) coordinates; the scanner's z axis.

    Returns
    -------
    (3,) float64 array
        ``R^T b0_world`` where ``R`` is the affine's rotation part with unit columns;
        ``(0, 0, 1)`` for an axial acquisition, and for a flipped axis a negative
        component (the sign does not change the dipole kernel).
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    r = a / np.sqrt((a**2).sum(axis=0, keepdims=True))
    b = r.T @ np.asarray(b0_world, dtype=float)
    return b / np.linalg.norm(b)


def kspace_grid(
    shape: Sequence[int], voxel_size: Sequence[float], *, real: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) along each axis, as sparse broadcastable arrays.

    With ``real=True`` the last axis holds ``rfftfreq`` (the layout of :func:`rfftn`).
    """
    n0, n1, n2 = (int(n) for n in shape)
    d0, d1, d2 = (float(v) for v in voxel_size)
    k0 = np.fft.fftfreq(n0, d=d0).astype(np.float32)[:, None, None]
    k1 = np.fft.fftfreq(n1, d=d1).astype(np.float32)[None, :, None]
    last = np.fft.rfftfreq(n2, d=d2) if real else np.fft.fftfreq(n2, d=d2)
    k2 = last.astype(np.float32)[None, None, :]
    return k0, k1, k2


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    real: bool = False,
    dc: float = 0.0,
) -> np.ndarray:
    """Unit dipole kernel in k-space, ``D(k) = 1/3 - (k.b0)^2 / |k|^2``.

    Parameters
    ----------
    shape : 3 ints
        Grid shape (voxels).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats, default (0, 0, 1)
        B0 direction in voxel-index space (normalised here).
    real : bool, default False
        Return the half-spectrum layout of :func:`rfftn`.
    dc : float, default 0.0
        Value at k = 0 (it only shifts the mean of the result).

    Returns
    -------
    float32 array
        The kernel, such that ``field_ppm = ifftn(D * fftn(chi_ppm))``.
    """
    b = np.asarray(b0_dir, dtype=np.float64)
    b = (b / np.linalg.norm(b)).astype(np.float32)
    k0, k1, k2 = kspace_grid(shape, voxel_size, real=real)
    kb = k0 * b[0] + k1 * b[1] + k2 * b[2]
    k2sum = k0**2 + k1**2 + k2**2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.float32(1.0 / 3.0) - kb**2 / k2sum
    d[0, 0, 0] = dc
    return d.astype(np.float32, copy=False)


def cone_spectrum(
    x: np.ndarray, voxel_size: Sequence[float], b0_dir: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrum of a real volume with the dipole kernel and ``|k|`` on its grid.

    The common first step of the cone measures (the field's inconsistency,
    :func:`qsm_bids.core.inversion.regularisation.cone_inconsistency`, and a map's
    streaking, :func:`qsm_bids.core.streaking.streaking_index`): one real FFT of ``x``
    (already demeaned, windowed and zero-padded by the caller), its power ``|X(k)|^2``,
    the unit dipole kernel ``D(k)`` and the radius ``|k|`` (cycles/mm), all in the
    half-spectrum layout of :func:`rfftn`.

    Parameters
    ----------
    x : (X, Y, Z) float array
        The volume on its FFT grid.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel-index space.

    Returns
    -------
    (power, dipole, radius) : float32 arrays
        ``power`` and ``dipole`` of the half-spectrum's shape; ``radius`` broadcastable to it.
    """
    spectrum = rfftn(np.asarray(x, dtype=np.float32))
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32, copy=False)
    del spectrum
    dipole = dipole_kernel(x.shape, voxel_size, b0_dir, real=True)
    k0, k1, k2 = kspace_grid(x.shape, voxel_size, real=True)
    return power, dipole, np.sqrt(k0**2 + k1**2 + k2**2)


def sphere_kernel(
    shape: Sequence[int], voxel_size: Sequence[float], radius_mm: float
) -> np.ndarray:
    """Normalised spherical kernel in image space, centred on voxel (0, 0, 0) (wrapped).

    Voxels whose centre lies within ``radius_mm`` of the origin get weight 1, then the
    kernel is divided by its sum. At least the centre voxel is always included.
    """
    axes = []
    for n, d in zip(shape, voxel_size, strict=True):
        idx = np.arange(int(n))
        idx = np.where(idx > n // 2, idx - n, idx)
        axes.append((idx * float(d)).astype(np.float32))
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    s = (r2 <= np.float32(radius_mm) ** 2).astype(np.float32)
    return s / s.sum()


def smv_kernel(
    shape: Sequence[int], voxel_size: Sequence[float], radius_mm: float, *, real: bool = False
) -> np.ndarray:
    """Spherical-mean-value kernel in k-space (real-valued, float32).

    ``ifftn(S * fftn(x))`` is the mean of ``x`` over a sphere of ``radius_mm`` around each
    voxel. With ``real=True`` the half-spectrum layout of :func:`rfftn` is returned.
    """
    s = sphere_kernel(shape, voxel_size, radius_mm)
    sk = rfftn(s) if real else fftn(s)
    return np.real(sk).astype(np.float32)


def laplacian_kernel(
    shape: Sequence[int], voxel_size: Sequence[float], *, real: bool = False
) -> np.ndarray:
    """k-space symbol of the 7-point discrete Laplacian (1/mm^2), float32, <= 0."""
    n0, n1, n2 = (int(n) for n in shape)
    d = [float(v) for v in voxel_size]
    w0 = (2 * np.cos(2 * np.pi * np.fft.fftfreq(n0)) - 2) / d[0] ** 2
    w1 = (2 * np.cos(2 * np.pi * np.fft.fftfreq(n1)) - 2) / d[1] ** 2
    f2 = np.fft.rfftfreq(n2) if real else np.fft.fftfreq(n2)
    w2 = (2 * np.cos(2 * np.pi * f2) - 2) / d[2] ** 2
    lap = w0[:, None, None] + w1[None, :, None] + w2[None, None, :]
    return lap.astype(np.float32)


def dipole_convolve(
    chi_ppm: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 1.0,
) -> np.ndarray:
    """Field in ppm of B0 produced by a susceptibility distribution in ppm.

    Parameters
    ----------
    chi_ppm : 3D array
        Susceptibility (ppm).
    voxel_size : 3 floats
        Voxel size (mm).
    b0_dir : 3 floats, default (0, 0, 1)
        B0 direction in voxel-index space.
    pad_factor : float, default 1.0
        Zero-pad each axis to ``pad_factor`` times its size first (2.0 avoids wrap-around
        of the field of strong sources such as air).

    Returns
    -------
    float32 array of the input's shape: the field shift (ppm).
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    target = fast_shape([int(np.ceil(n * pad_factor)) for n in chi.shape], complex_radices=False)
    padded, sl = pad_to(chi, target)
    d = dipole_kernel(target, voxel_size, b0_dir, real=True)
    field = irfftn(d * rfftn(padded), s=target)[sl]
    return field.astype(np.float32)
