"""Susceptibility referencing: shift the map so that a reference region has zero mean.

QSM recovers susceptibility only up to a constant (the k = 0 component of the dipole kernel
is zero). The 2024 QSM consensus (Bilgic et al., MRM 2024, doi:10.1002/mrm.30006) asks for a
stated reference region, and for the whole brain to be reported in any case.
"""

from __future__ import annotations

from collections.abc import Callable

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


def reference_with_fallback(
    run: Callable[[], np.ndarray],
    algorithm: str,
    chi: np.ndarray,
    mask: np.ndarray,
    *,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, str | None]:
    """Run the chosen referencing; when CSF referencing finds no CSF, use the whole brain.

    The CSF method (:func:`qsm_bids.core.reference_csf.reference_csf`) raises
    ``ValueError`` on data without ventricles (a slab, a crop); the map is then referenced
    to its mean over ``mask`` (:func:`reference_mean`) and a note says so. Errors of the
    other methods are not caught.

    Parameters
    ----------
    run : callable
        Runs the recipe's referencing on ``chi`` and returns the map (ppm).
    algorithm : str
        The referencing algorithm's registry name.
    chi, mask, region
        As :func:`reference_mean`, for the fallback.

    Returns
    -------
    (chi, note) : (3D array, str or None)
        The referenced map (ppm) and the note of a fallback (None without one).
    """
    try:
        return run(), None
    except ValueError as exc:
        if algorithm != "csf":
            raise
        chi = reference_mean(chi, mask, region=region)
        return chi, f"CSF referencing failed ({exc}); referenced to the mean over the mask"
