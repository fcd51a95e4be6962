"""Susceptibility referencing to cerebrospinal fluid (CSF) of the lateral ventricles.

CSF is nearly pure water, the usual zero of QSM. Straub et al. (MRM 2017;78:204) found the
ventricular CSF a suitable reference when it is segmented carefully (avoiding the choroid
plexus and partial volume); Deh et al. (2015) referenced to the lateral ventricles detected
automatically from R2*; the 2024 QSM consensus (QSM Consensus Organization Committee, MRM
2024;91:1834) recommends CSF or the whole brain as reference, always stated.

Detection here: CSF has the lowest R2* of the brain (about 2-4 1/s at 3 T against >= 10 1/s
for tissue) and carries signal (not a void); the lateral ventricles are the largest such
compartments in the central part of the brain. Sulcal CSF near the surface (strong partial
volume) is left out by a depth criterion.

References
----------
* Straub S, Schneider TM, Emmerich J, et al. Suitable reference tissues for quantitative
  susceptibility mapping of the brain. Magn Reson Med 2017;78:204-214.
* Deh K, Nguyen TD, Eskreis-Winkler S, et al. Reproducibility of quantitative susceptibility
  mapping in the brain at two field strengths from two vendors. J Magn Reson Imaging
  2015;42:1592-1600.
* QSM Consensus Organization Committee. Recommended implementation of quantitative
  susceptibility mapping for clinical research in the brain: a consensus of the ISMRM
  electro-magnetic tissue properties study group. Magn Reson Med 2024;91:1834-1862.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["detect_csf", "reference_csf"]


def detect_csf(
    mask: np.ndarray,
    *,
    r2star: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    region: np.ndarray | None = None,
    voxel_size: Sequence[float] | None = None,
    r2star_max: float = 5.0,
    magnitude_min: float = 0.5,
    magnitude_percentile: float = 90.0,
    min_depth: float = 0.25,
    max_components: int = 2,
    min_fraction: float = 2e-4,
    erode_voxels: int = 1,
) -> np.ndarray:
    """Ventricular CSF: low-R2*, not-dark voxels deep in the brain, largest components.

    Steps (after Deh et al. 2015 and Straub et al., MRM 2017;78:204):

    1. central brain: voxels whose distance to the mask surface is at least ``min_depth``
       times the largest such distance (Euclidean, in mm when ``voxel_size`` is given);
    2. candidates there: ``R2* < r2star_max`` and, with ``magnitude``, a first-echo
       magnitude above ``magnitude_min`` times its brain median (excludes signal voids and
       noise, whose flat decay also gives a low R2*). Without ``r2star``: the
       ``magnitude_percentile`` brightest voxels of the last echo (the most T2*-weighted,
       in which CSF is brightest);
    3. the ``max_components`` largest connected components of at least ``min_fraction``
       of the brain volume;
    4. erosion by ``erode_voxels`` (skipped where it would remove everything) against
       partial volume with tissue and the choroid plexus.

    Parameters
    ----------
    mask : (X, Y, Z) bool array
        Brain mask.
    r2star : (X, Y, Z) float array or None, default None
        R2* map in 1/s.
    magnitude : (X, Y, Z) or (X, Y, Z, E) float array or None, default None
        Magnitude (any scale).
    region : (X, Y, Z) bool array or None, default None
        Optional search region (e.g. a user ROI around the ventricles); intersected with
        the central brain.
    voxel_size : 3 floats or None, default None
        Voxel size in mm (anisotropic voxels); None: isotropic.
    r2star_max : float, default 5.0
        Largest R2* (1/s) of CSF; 5 at 3 T, about 10 at 7 T.
    magnitude_min : float, default 0.5
        Smallest first-echo magnitude of CSF relative to the brain median.
    magnitude_percentile : float, default 90.0
        Percentile (within the central brain) of the last-echo magnitude above which a
        voxel counts as CSF when no R2* map is given.
    min_depth : float, default 0.25
        Minimum depth below the mask surface, as a fraction of the largest depth.
    max_components : int, default 2
        Number of largest connected components kept (the two lateral ventricles).
    min_fraction : float, default 2e-4
        Smallest component kept, as a fraction of the brain mask volume.
    erode_voxels : int, default 1
        Erosion of the detected region (voxels).

    Returns
    -------
    (X, Y, Z) bool array
        The detected CSF region (possibly empty).
    """
    m = np.asarray(mask, dtype=bool)
    if r2star is None and magnitude is None:
        raise ValueError("CSF detection needs an R2* map or magnitude images")
    if not m.any():
        return np.zeros(m.shape, bool)
    sampling = None if voxel_size is None else tuple(float(v) for v in voxel_size)

    # Step 1: central part of the brain mask
    depth = ndimage.distance_transform_edt(np.pad(m, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    cand = m & (depth >= min_depth * float(depth.max()))
    if region is not None:
        cand &= np.asarray(region, dtype=bool)

    # Step 2: low R2* and signal present (or brightest late-echo magnitude)
    mag = None
    if magnitude is not None:
        mag = np.abs(np.nan_to_num(np.asarray(magnitude, dtype=np.float32)))
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape[:3] != m.shape:
            raise ValueError(f"magnitude shape {mag.shape} does not match mask {m.shape}")
    if r2star is not None:
        r2 = np.asarray(r2star, dtype=np.float32)
        if r2.shape != m.shape:
            raise ValueError(f"r2star shape {r2.shape} != mask shape {m.shape}")
        cand &= np.isfinite(r2) & (r2 >= 0) & (r2 < r2star_max)
        if mag is not None:
            first = mag[..., 0]
            cand &= first > magnitude_min * float(np.median(first[m]))
    else:
        last = mag[..., -1]
        if cand.any():
            cand &= last > float(np.percentile(last[cand], magnitude_percentile))

    # Step 3: the largest connected components
    lab, n = ndimage.label(cand)
    if n == 0:
        return cand
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1][: max(1, int(max_components))]
    keep = [k for k in order if sizes[k] > 0 and sizes[k] >= min_fraction * m.sum()]
    csf = np.isin(lab, keep)

    # Step 4: erosion against partial volume
    if erode_voxels > 0 and csf.any():
        eroded = ndimage.binary_erosion(csf, iterations=int(erode_voxels))
        if eroded.any():
            csf = eroded
    return csf


def reference_csf(
    chi: np.ndarray,
    mask: np.ndarray,
    *,
    region: np.ndarray | None = None,
    r2star: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    voxel_size: Sequence[float] | None = None,
    r2star_max: float = 5.0,
    magnitude_min: float = 0.5,
    magnitude_percentile: float = 90.0,
    min_depth: float = 0.25,
    max_components: int = 2,
    min_fraction: float = 2e-4,
    erode_voxels: int = 1,
) -> np.ndarray:
    """Subtract the mean susceptibility of automatically detected ventricular CSF (ppm).

    Stage ``reference`` (Deh et al. 2015; Straub et al., MRM 2017;78:204; QSM consensus,
    MRM 2024;91:1834). The CSF is found by :func:`detect_csf` from the R2* map (and the
    magnitude), see there for the parameters and their defaults.

    Parameters
    ----------
    chi : (X, Y, Z) float array
        Susceptibility in ppm.
    mask : (X, Y, Z) bool array
        Mask of the susceptibility map; the output is 0 outside it.
    region : (X, Y, Z) bool array or None, default None
        Optional search region for the CSF (e.g. a user ROI); None: the whole brain.
    r2star, magnitude, voxel_size, r2star_max, magnitude_min, magnitude_percentile,
    min_depth, max_components, min_fraction, erode_voxels
        As in :func:`detect_csf` (defaults None, None, None, 5.0 1/s, 0.5, 90.0, 0.25, 2,
        2e-4, 1).

    Returns
    -------
    (X, Y, Z) float32 array
        ``chi - mean(chi[csf])`` inside the mask, 0 outside.

    Raises
    ------
    ValueError
        When neither ``r2star`` nor ``magnitude`` is given, or no CSF is found (the caller
        may fall back to the whole-brain mean with a warning).
    """
    m = np.asarray(mask, dtype=bool)
    x = np.asarray(chi, dtype=np.float32)
    if x.shape != m.shape:
        raise ValueError(f"chi shape {x.shape} != mask shape {m.shape}")
    csf = detect_csf(
        m,
        r2star=r2star,
        magnitude=magnitude,
        region=region,
        voxel_size=voxel_size,
        r2star_max=r2star_max,
        magnitude_min=magnitude_min,
        magnitude_percentile=magnitude_percentile,
        min_depth=min_depth,
        max_components=max_components,
        min_fraction=min_fraction,
        erode_voxels=erode_voxels,
    )
    csf &= np.isfinite(x)
    if not csf.any():
        raise ValueError(
            f"no CSF found (R2* < {r2star_max} 1/s in the central brain): cannot reference to CSF"
        )
    offset = float(np.mean(x[csf], dtype=np.float64))
    return np.where(m, x - np.float32(offset), np.float32(0.0)).astype(np.float32)
