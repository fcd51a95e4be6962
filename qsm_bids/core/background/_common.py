"""Helpers shared by the background-removal methods: cropping to the mask with padding,
the SMV kernel with the matching mask erosion, and the in-place vector operations of the
conjugate-gradient loops (from :mod:`qsm_bids.core.linalg`)."""

from __future__ import annotations

import math

import numpy as np

from qsm_bids.core import kernels


def _crop_pad(
    f: np.ndarray, m: np.ndarray, voxel_size: tuple[float, ...], radius_mm: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]:
    """Crop to the mask's bounding box and zero-pad by the radius (plus one voxel) so that
    spheres never wrap around the FFT grid. Returns the padded field (zero outside the
    mask), the padded mask, the crop slices in the input, the slices of the crop in the
    padded grid, and the padded shape."""
    idx = np.nonzero(m)
    crop = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    pads = [int(math.ceil(radius_mm / d)) + 1 for d in voxel_size]
    fc = np.where(m[crop], f[crop], np.float32(0.0)).astype(np.float32, copy=False)
    shape = kernels.fast_shape(fc.shape, pads)
    fp, sl = kernels.pad_to(fc, shape)
    mp, _ = kernels.pad_to(m[crop], shape)
    return fp, mp, crop, sl, shape


def _smv_and_erosion(
    shape: tuple[int, ...], voxel_size: tuple[float, ...], radius_mm: float, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SMV kernel (rfftn layout, float32) and the mask eroded by the sphere: voxels whose
    whole sphere lies in the mask (spherical mean of the mask above ``1 - 0.5 / n``, with
    ``n`` voxels in the sphere, to absorb float32 rounding)."""
    sphere = kernels.sphere_kernel(shape, voxel_size, radius_mm)
    n_sphere = round(1.0 / float(sphere.max()))
    s_k = np.real(kernels.rfftn(sphere)).astype(np.float32)
    del sphere
    mean_mask = kernels.irfftn(s_k * kernels.rfftn(mask.astype(np.float32)), s=shape)
    eroded = mean_mask > np.float32(1.0 - 0.5 / n_sphere)
    return s_k, eroded & mask
