"""Background removal with susceptibility feedback: rerun a background method on the total
field minus the field of a first susceptibility estimate, then add that field back.

Principle: every background method estimates a field that is harmonic inside the mask. Its
error is the part of the *local* field that such a field can imitate, mostly the field of
sources near the mask's edge (for LBV exactly the harmonic extension of the local field's
boundary values). Subtracting the field ``D chi_1`` of a first estimate ``chi_1`` (zero
outside the mask) first leaves the background plus the local field's residual
``D (chi - chi_1)``, much smaller near the edge, so the method's error shrinks with it;
adding ``D chi_1`` back gives the new local field::

    local_2 = remove(total - D chi_1) + D chi_1

The fixed point is a local field consistent with its own inversion. This is the alternating
(block coordinate) form of fitting the total field with sources inside and outside the mask
at once, as total field inversion does (Liu Z et al., Magn Reson Med 2017;78:303-315), with
the background method kept as the outside-source model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qsm_bids.core.kernels import MaskBox, dipole_kernel, irfftn, rfftn

__all__ = ["susceptibility_field", "remove_with_feedback"]


def susceptibility_field(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
) -> np.ndarray:
    """Field (ppm of B0) of the susceptibility inside ``mask``, on the mask's bounding box.

    The convolution runs on the mask's bounding box padded by 8 voxels
    (:class:`qsm_bids.core.kernels.MaskBox`), the grid the dipole inversions themselves model
    the field on, so the feedback uses the inversion's own forward model; the field is
    returned on the full grid, zero outside the box.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) array
        Susceptibility (ppm); values outside ``mask`` are ignored.
    mask : (X, Y, Z) array
        Where ``chi_ppm`` is a source (non-zero = inside).
    voxel_size : 3 floats
        Voxel size (mm).
    b0_dir : 3 floats
        B0 direction in voxel-index space.

    Returns
    -------
    (X, Y, Z) float32 array
        ``D (chi 1_mask)`` in ppm on the padded bounding box of ``mask``, zero elsewhere.
    """
    inside = np.asarray(mask) != 0
    box = MaskBox(inside, 8)
    chi = box.embed(np.where(inside, np.asarray(chi_ppm, np.float32), np.float32(0)))
    d = dipole_kernel(box.shape, voxel_size, b0_dir, real=True, dc=0.0)
    return box.extract(irfftn(rfftn(chi) * d, s=box.shape))


def remove_with_feedback(
    remove: Callable[..., tuple[np.ndarray, np.ndarray]],
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    chi_field: np.ndarray,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """One feedback pass: ``remove(field - chi_field) + chi_field`` on the returned mask.

    Parameters
    ----------
    remove : callable
        A background method with the stage signature ``(field, mask, voxel_size, b0_dir,
        **kwargs) -> (local_field, local_mask)`` (e.g. :func:`qsm_bids.core.background.pdf`).
    field : (X, Y, Z) array
        Total field, any linear unit (the pipeline passes Hz).
    mask : (X, Y, Z) array
        Brain mask (non-zero = inside).
    voxel_size : 3 floats
        Voxel size (mm).
    b0_dir : 3 floats
        B0 direction in voxel-index space.
    chi_field : (X, Y, Z) array
        Field of the current susceptibility estimate in the unit of ``field``
        (:func:`susceptibility_field` converted, e.g. to Hz).
    **kwargs
        Passed to ``remove``.

    Returns
    -------
    local_field : (X, Y, Z) float32 array
        The new local field (unit of ``field``), zero outside ``local_mask``.
    local_mask : (X, Y, Z) bool array
        ``remove``'s mask.
    """
    f = np.asarray(field, np.float32)
    cf = np.asarray(chi_field, np.float32)
    if cf.shape != f.shape:
        raise ValueError(f"chi_field {cf.shape} must have the shape of field {f.shape}")
    # step 1: the background method on the total field minus the estimate's field
    residual, local_mask = remove(f - cf, mask, voxel_size, b0_dir, **kwargs)
    local_mask = np.asarray(local_mask, bool)
    # step 2: the estimate's field added back
    local = np.where(local_mask, residual + cf, np.float32(0)).astype(np.float32)
    return local, local_mask
