"""Susceptibility referencing: shift the map so that a reference region has zero mean.

QSM recovers susceptibility only up to a constant (the k = 0 component of the dipole kernel
is zero). The 2024 QSM consensus (Bilgic et al., MRM 2024, doi:10.1002/mrm.30006) asks for a
stated reference region, and for the whole brain to be reported in any case.
"""

from __future__ import annotations

import numpy as np


def reference_mean(
    chi: np.ndarray, mask: np.ndarray, *, region: np.ndarray | None = None
) -> np.ndarray:
    """Subtract the mean susceptibility over the whole brain mask (ppm).

    Parameters
    ----------
    chi : 3D array
        Susceptibility (ppm).
    mask : 3D bool array
        Brain mask; the mean is taken over it and the output is zero outside it.
    region : ignored
        Accepted for a uniform calling convention with :func:`reference_mask`.

    Returns
    -------
    float32 array: ``chi - mean(chi[mask])`` inside the mask, 0 outside.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the brain mask is empty: nothing to reference")
    offset = float(np.mean(chi[mask], dtype=np.float64))
    return np.where(mask, chi - offset, 0).astype(np.float32)


def reference_mask(
    chi: np.ndarray, mask: np.ndarray, *, region: np.ndarray | None = None
) -> np.ndarray:
    """Subtract the mean susceptibility over a user-given reference region (ppm).

    Parameters
    ----------
    chi : 3D array
        Susceptibility (ppm).
    mask : 3D bool array
        Brain mask; the output is zero outside it.
    region : 3D bool array
        Reference region (e.g. CSF in the lateral ventricles); only its part inside the
        brain mask is used. Required.

    Returns
    -------
    float32 array: ``chi - mean(chi[region & mask])`` inside the mask, 0 outside.
    """
    if region is None:
        raise ValueError("reference 'mask' needs a reference region (--reference-mask)")
    mask = np.asarray(mask, dtype=bool)
    sel = np.asarray(region, dtype=bool) & mask
    if not sel.any():
        raise ValueError("the reference region does not overlap the brain mask")
    offset = float(np.mean(chi[sel], dtype=np.float64))
    return np.where(mask, chi - offset, 0).astype(np.float32)
