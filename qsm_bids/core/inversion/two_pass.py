"""Two-pass combination for strong sources (veins, haemorrhage, calcification).

Where a strong source makes the phase unreliable (signal loss, steep field gradients), a
quality-based mask has a hole. Inverting with the hole filled puts the bad phase into the
data term and streaks spread from the source across the map; inverting on the mask with the
hole makes background removal treat the source as an outside source and keeps the rest of
the map clean, but leaves the hole empty. The two-pass scheme (Stewart AW et al., "QSMxT:
Robust masking and artifact reduction for quantitative susceptibility mapping", Magn Reson
Med 2022;87:1289-1300) runs the whole background removal and inversion twice:

1. on the reliable mask (with holes): the map outside the holes;
2. on the mask with its holes filled: the map inside the holes;

and takes each map where it is trusted. The second pass's values inside the holes are
shifted by the median difference of the two maps over the voxels both cover, so the two
parts share one zero (the second pass's offset depends on its own mask).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["fill_mask_holes", "fill_from_second_pass", "combine_two_pass"]


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its enclosed holes filled (3D, 6-connected background).

    Parameters
    ----------
    mask : (X, Y, Z) array
        Brain mask (non-zero = inside), possibly with holes where the phase is unreliable.

    Returns
    -------
    (X, Y, Z) bool array
        ``mask`` plus every background region that does not reach the volume's border.
        Regions open to the outside of the brain (e.g. next to the sinuses) stay out.
    """
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {m.shape}")
    return ndimage.binary_fill_holes(m)


def combine_two_pass(
    chi_reliable: np.ndarray,
    reliable_mask: np.ndarray,
    chi_filled: np.ndarray,
    filled_mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine the two passes: pass 1 where it exists, pass 2 (shifted) in the holes.

    Parameters
    ----------
    chi_reliable : (X, Y, Z) array
        Susceptibility (ppm) of pass 1, on ``reliable_mask``.
    reliable_mask : (X, Y, Z) array
        Pass 1's mask (non-zero = inside).
    chi_filled : (X, Y, Z) array
        Susceptibility (ppm) of pass 2, on ``filled_mask``.
    filled_mask : (X, Y, Z) array
        Pass 2's mask.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        ``chi_reliable`` inside ``reliable_mask``; ``chi_filled + offset`` in the voxels of
        ``filled_mask`` outside it, with ``offset`` the median of ``chi_reliable -
        chi_filled`` over the voxels in both masks (0 if there are none); zero elsewhere.
    mask : (X, Y, Z) bool array
        The union of both masks.
    """
    a = np.asarray(chi_reliable, dtype=np.float32)
    b = np.asarray(chi_filled, dtype=np.float32)
    ma = np.asarray(reliable_mask) != 0
    mb = np.asarray(filled_mask) != 0
    _check_shapes(a, ma, b, mb)
    both = ma & mb
    offset = float(np.median(a[both] - b[both])) if both.any() else 0.0
    return fill_from_second_pass(a, ma, b, mb, offset=offset), ma | mb


def _check_shapes(*arrays: np.ndarray) -> None:
    shapes = [x.shape for x in arrays]
    if len(set(shapes)) != 1 or len(shapes[0]) != 3:
        raise ValueError(f"maps and masks must be 3D arrays of one shape; got {shapes}")


def fill_from_second_pass(
    first: np.ndarray,
    first_mask: np.ndarray,
    second: np.ndarray,
    second_mask: np.ndarray,
    *,
    offset: float = 0.0,
) -> np.ndarray:
    """``first`` inside ``first_mask``; ``second + offset`` in the voxels of ``second_mask``
    outside it (the holes); zero elsewhere.

    Parameters
    ----------
    first, second : (X, Y, Z) arrays
        The two passes' volumes in one unit (susceptibility in ppm, or local field in Hz).
    first_mask, second_mask : (X, Y, Z) arrays
        Their masks (non-zero = inside).
    offset : float, default 0.0
        Added to ``second`` in the holes (unit of the volumes).

    Returns
    -------
    (X, Y, Z) float32 array
    """
    a = np.asarray(first, dtype=np.float32)
    b = np.asarray(second, dtype=np.float32)
    ma = np.asarray(first_mask) != 0
    mb = np.asarray(second_mask) != 0
    _check_shapes(a, ma, b, mb)
    out = np.where(ma, a, np.float32(0))
    holes = mb & ~ma
    out[holes] = b[holes] + np.float32(offset)
    return out.astype(np.float32, copy=False)
