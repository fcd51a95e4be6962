"""Brain mask from GRE magnitude (stage ``mask``): threshold and morphological clean-up.

The head in a GRE magnitude image is bright brain, a dark skull, then bright scalp; the
background is Rician noise. The mask is built by

1. a robust intensity threshold (Otsu, Otsu N. IEEE Trans Syst Man Cybern 1979;9:62-66, on
   the intensity range clipped at a high percentile, capped at a fraction of that percentile
   and kept above the background noise);
2. an erosion by a few mm (Euclidean distance transform in mm) that cuts the thin bridges
   between brain and scalp, and keeping the largest connected component: the brain;
3. a dilation back by the same distance, restricted to the threshold mask;
4. filling of holes in 3D and slice by slice along each axis (dark ventricles, veins,
   signal voids inside the brain);
5. smoothing of the surface (Gaussian of the mask, threshold at 0.5).

This follows the usual threshold + morphology brain extraction of GRE/QSM pipelines
(e.g. the "threshold, erode, largest component, dilate, fill" recipe of QSMxT and of the
QSM consensus, MRM 2024, doi:10.1002/mrm.30006); all distances are in mm so the result does
not depend on the voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from qsm_bids.core.kernels import bounding_box

__all__ = [
    "clean_mask",
    "combine_echoes",
    "magnitude_threshold",
    "mask_from_magnitude",
    "mask_from_magnitude_and_quality",
    "mask_from_phase",
    "phase_quality",
]


def combine_echoes(magnitude: np.ndarray, combine: str) -> np.ndarray:
    """One magnitude image from the echoes: root-sum-of-squares (``"rss"``) or the first
    echo (``"first"``); a 3D input is returned as it is (absolute values, float32)."""
    mag = np.abs(np.asarray(magnitude, dtype=np.float32))
    if mag.ndim == 3:
        return mag
    if mag.ndim != 4:
        raise ValueError(f"magnitude must be (X, Y, Z) or (X, Y, Z, E); got {mag.shape}")
    if combine == "rss":
        return np.sqrt(np.sum(np.square(mag), axis=-1, dtype=np.float32))
    if combine == "first":
        return mag[..., 0].copy()
    raise ValueError(f"combine must be 'rss' or 'first'; got {combine!r}")


def magnitude_threshold(
    image: np.ndarray,
    *,
    percentile: float = 99.0,
    fraction: float = 0.15,
    background_ratio: float = 0.15,
    noise_factor: float = 4.0,
) -> float:
    """Robust intensity threshold separating the head from the background.

    Parameters
    ----------
    image : 3D float array
        Magnitude image (any scale).
    percentile : float, default 99.0
        Percentile of the non-zero intensities taken as the robust maximum ``hi``.
    fraction : float, default 0.15
        The threshold is at most ``fraction * hi`` (keeps dark brain tissue; it is the
        threshold when the whole volume is tissue).
    background_ratio : float, default 0.15
        The Otsu classes are taken as "background vs tissue" when the median of the dark
        class is below ``background_ratio`` times the median of the bright class; then
        the threshold is kept above the background noise.
    noise_factor : float, default 4.0
        Threshold floor with a background: median + ``noise_factor`` robust SDs (1.4826 MAD)
        of the dark class.

    Returns
    -------
    float
        ``min(otsu, fraction * hi)``, raised to the noise floor when a background exists;
        Otsu's threshold is computed on the intensities clipped to ``[0, hi]``.
    """
    img = np.asarray(image, dtype=np.float32)
    vals = img[np.isfinite(img) & (img > 0)]
    if vals.size == 0:
        return 0.0
    hi = float(np.percentile(vals, percentile))
    clipped = np.minimum(vals, hi)
    if float(clipped.min()) >= hi:  # constant image
        return 0.5 * hi
    t_otsu = float(threshold_otsu(clipped))
    t = min(t_otsu, fraction * hi)
    dark = clipped[clipped <= t_otsu]
    bright = clipped[clipped > t_otsu]
    if dark.size and bright.size and np.median(dark) < background_ratio * np.median(bright):
        med = float(np.median(dark))
        mad = float(np.median(np.abs(dark - med)))
        t = max(t, med + noise_factor * 1.4826 * mad)
        t = min(t, t_otsu)
    return t


def _ball_open_largest(fg: np.ndarray, voxel_size: Sequence[float], radius_mm: float) -> np.ndarray:
    """Erode by ``radius_mm``, keep the largest component, dilate back (within ``fg``).

    Both distance transforms run on the bounding box of their object grown by the radius
    (plus a voxel), which holds every voxel within ``radius_mm`` of it: the same result as
    on the whole grid, on a smaller one.
    """
    pad = int(np.ceil(radius_mm / min(voxel_size))) + 1 if radius_mm > 0 else 0
    if radius_mm > 0:
        # distance (mm) of each foreground voxel to the nearest background voxel; the
        # volume border counts as foreground, so a brain cut by the field of view survives
        inside = np.zeros(fg.shape, dtype=bool)
        box = bounding_box(fg, pad)
        inside[box] = ndimage.distance_transform_edt(fg[box], sampling=voxel_size) > radius_mm
    else:
        inside = fg.copy()
    if not inside.any():  # everything eroded away: fall back to the threshold mask itself
        inside = fg.copy()
    lab, n = ndimage.label(inside)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        inside = lab == int(np.argmax(sizes))
    elif n == 0:
        return inside
    if radius_mm > 0:
        # dilation: distance (mm) to the nearest kept voxel
        box = bounding_box(inside, pad)
        grown = np.zeros(fg.shape, dtype=bool)
        grown[box] = ndimage.distance_transform_edt(~inside[box], sampling=voxel_size) <= radius_mm
        inside = grown & fg
        # the dilation may touch other bits of fg: keep the component of the brain
        lab, n = ndimage.label(inside)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            inside = lab == int(np.argmax(sizes))
    return inside


def _fill_holes(m: np.ndarray, slicewise: bool) -> np.ndarray:
    out = ndimage.binary_fill_holes(m)
    if slicewise:
        for axis in range(3):
            # 4-connectivity inside the planes normal to `axis`, none across them
            st = ndimage.generate_binary_structure(3, 1)
            idx = [1, 1, 1]
            for k in (0, 2):
                idx[axis] = k
                st[tuple(idx)] = False
            out = ndimage.binary_fill_holes(out, structure=st)
    return out


def mask_from_magnitude(
    magnitude: np.ndarray,
    voxel_size: tuple[float, float, float],
    *,
    combine: str = "rss",
    threshold_scale: float = 1.0,
    threshold_fraction: float = 0.15,
    percentile: float = 99.0,
    erode_mm: float = 4.0,
    fill_holes: bool = True,
    fill_slicewise: bool = False,
    smooth_mm: float = 1.0,
    shrink_voxels: int = 1,
) -> np.ndarray:
    """Brain mask from single- or multi-echo GRE magnitude.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) float array
        Magnitude image(s), any intensity scale.
    voxel_size : 3 floats
        Voxel size in mm.
    combine : {"rss", "first"}, default "rss"
        How echoes are merged: root-sum-of-squares, or the first echo only.
    threshold_scale : float, default 1.0
        Multiplies the automatic threshold (see :func:`magnitude_threshold`); > 1 gives a
        tighter mask.
    threshold_fraction : float, default 0.15
        Upper bound of the threshold as a fraction of the robust maximum.
    percentile : float, default 99.0
        Percentile used as robust maximum intensity.
    erode_mm : float, default 4.0
        Erosion (and re-dilation) distance in mm that separates the brain from the scalp
        (should exceed half the scalp thickness and the width of bridges through the skull).
        0 disables the opening (the largest component of the threshold mask is kept).
    fill_holes : bool, default True
        Fill enclosed holes (ventricles, veins, signal voids) in 3D.
    fill_slicewise : bool, default False
        Also fill holes enclosed within single slices along each axis (holes that open to
        the outside only through a thin channel, or at the border of the field of view).
        Off by default: in axial slices the skull base and sinuses can be enclosed by the
        temporal lobes, and filling them puts bone and air (strong sources) in the mask.
    smooth_mm : float, default 1.0
        Sigma (mm) of the Gaussian smoothing of the mask surface (0: none).
    shrink_voxels : int, default 1
        Final erosion in voxels (the volume border counts as inside). It removes the
        partial-volume rim where the brain meets bone or air: a voxel there is bright enough
        to pass the threshold but holds part of a strong source (bone about -2 ppm, air
        +9.4 ppm), whose field background removal would then keep as local. On the
        built-in phantom at 2 mm, one voxel cut the V-SHARP local-field NRMSE from 125 % to
        34 %.

    Returns
    -------
    (X, Y, Z) bool array
        The brain mask.

    Notes
    -----
    Steps (see the module docstring): threshold -> erode by ``erode_mm`` -> largest
    connected component -> dilate by ``erode_mm`` within the threshold mask -> fill holes
    (3D, optionally slice-wise) -> smooth -> fill holes again -> shrink by
    ``shrink_voxels``. When every voxel is tissue (a crop
    inside the brain) the threshold keeps almost all voxels and the border of the volume is
    not eroded (it counts as foreground), so the mask is ~ the whole volume.
    """
    img = combine_echoes(magnitude, combine)
    vox = tuple(float(v) for v in voxel_size)
    if len(vox) != 3:
        raise ValueError(f"voxel_size must have 3 values; got {voxel_size}")

    # Step 1: robust threshold
    t = threshold_scale * magnitude_threshold(
        img, percentile=percentile, fraction=threshold_fraction
    )
    fg = np.isfinite(img) & (img > t)
    return clean_mask(
        fg,
        vox,
        erode_mm=erode_mm,
        fill_holes=fill_holes,
        fill_slicewise=fill_slicewise,
        smooth_mm=smooth_mm,
        shrink_voxels=shrink_voxels,
    )


def clean_mask(
    fg: np.ndarray,
    voxel_size: Sequence[float],
    *,
    erode_mm: float = 4.0,
    fill_holes: bool = True,
    fill_slicewise: bool = False,
    smooth_mm: float = 1.0,
    shrink_voxels: int = 1,
) -> np.ndarray:
    """Steps 2-6 of :func:`mask_from_magnitude` on a thresholded foreground ``fg``.

    Opening by ``erode_mm`` restricted to the largest component, hole filling, surface
    smoothing, and a final erosion by ``shrink_voxels``; see :func:`mask_from_magnitude`
    for the parameters (same defaults).
    """
    vox = tuple(float(v) for v in voxel_size)
    if not fg.any():
        return np.zeros(fg.shape, dtype=bool)

    # Steps 2-3: opening by erode_mm restricted to the largest component
    brain = _ball_open_largest(fg, vox, erode_mm)

    # Step 4: fill holes (3D, optionally slice-wise)
    if fill_holes:
        brain = _fill_holes(brain, fill_slicewise)

    # Step 5: smooth the surface
    if smooth_mm > 0:
        sig = [smooth_mm / v for v in vox]
        brain = ndimage.gaussian_filter(brain.astype(np.float32), sig, mode="nearest") > 0.5
        if fill_holes:
            brain = ndimage.binary_fill_holes(brain)

    # Step 6: drop the partial-volume rim
    if shrink_voxels > 0:
        brain = ndimage.binary_erosion(brain, iterations=shrink_voxels, border_value=1)
    return brain


def mask_from_phase(
    phase: np.ndarray,
    voxel_size: tuple[float, float, float],
    *,
    coherence_threshold: float = 0.75,
    erode_mm: float = 4.0,
    fill_holes: bool = True,
    smooth_mm: float = 1.0,
    shrink_voxels: int = 1,
) -> np.ndarray:
    """Brain mask from the wrapped phase alone (for data without magnitude images).

    Voxels whose local phase coherence (:func:`qsm_bids.core.quality.phase_coherence`,
    3x3x3 neighbourhood, first two echoes) exceeds ``coherence_threshold`` are tissue with
    signal; noise (air, bone) has a coherence of about 0.2. The result is cleaned up like
    the magnitude mask (:func:`clean_mask`). Less reliable than a magnitude mask: tissue
    with strong field gradients (near sinuses) loses coherence and may be excluded.

    Parameters
    ----------
    phase : (X, Y, Z) or (X, Y, Z, E) array
        Wrapped phase (rad).
    voxel_size : 3 floats
        Voxel size (mm).
    coherence_threshold : float, default 0.75
        Minimum local coherence (0..1) of tissue.
    erode_mm, fill_holes, smooth_mm, shrink_voxels
        As in :func:`mask_from_magnitude` (defaults 4.0, True, 1.0, 1).

    Returns
    -------
    (X, Y, Z) bool array
    """
    from qsm_bids.core.quality import phase_coherence

    fg = phase_coherence(phase) > coherence_threshold
    return clean_mask(
        fg,
        voxel_size,
        erode_mm=erode_mm,
        fill_holes=fill_holes,
        smooth_mm=smooth_mm,
        shrink_voxels=shrink_voxels,
    )


# ------------------------------------------------------------------- phase-quality masking
def phase_quality(
    phase: np.ndarray,
    echo_times: Sequence[float] | None = None,
    *,
    linearity: bool = True,
) -> np.ndarray:
    """ROMEO-style voxel quality map of the wrapped phase, in [0, 1].

    The mean over the (up to 6) face neighbours of the edge reliabilities of
    :func:`qsm_bids.core.unwrap.region_growing.edge_weights` (Dymerska et al., MRM
    2021;85:2294, ROMEO's voxel quality): phase coherence ``1 - |dphi| / pi`` of echo 1,
    times, for >= 2 echoes with known echo times, the gradient coherence between echoes 1
    and 2, times (``linearity``) the phase linearity along the edge's line. Smooth phase
    (tissue with signal) scores near 1; noise (air, bone, background) about 0.1-0.3; tissue
    with steep or irregular field (next to sinuses at long TE) scores in between.

    Parameters
    ----------
    phase : (X, Y, Z) or (X, Y, Z, E) float array
        Wrapped phase in rad.
    echo_times : E floats or None, default None
        Echo times in s; needed (with E >= 2) for the gradient coherence.
    linearity : bool, default True
        Include the phase-linearity factor.

    Returns
    -------
    (X, Y, Z) float32 array in [0, 1].
    """
    from qsm_bids.core.unwrap.region_growing import edge_weights

    p = np.asarray(phase, dtype=np.float32)
    if p.ndim == 3:
        p = p[..., None]
    if p.ndim != 4:
        raise ValueError(f"phase must be (X, Y, Z) or (X, Y, Z, E); got {p.shape}")
    p = np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)
    phase2 = None
    ratio = 0.5
    if p.shape[3] >= 2 and echo_times is not None and len(echo_times) >= 2:
        te1, te2 = float(echo_times[0]), float(echo_times[1])
        if te1 > 0 and te2 > 0 and te1 != te2:
            phase2, ratio = p[..., 1], te1 / te2
    w = edge_weights(p[..., 0], None, None, phase2, ratio, linearity=linearity)
    q = np.maximum(w.astype(np.float32) - 1.0, 0.0) / np.float32(254.0)
    present = (w > 0).astype(np.float32)
    acc = q.sum(axis=0)
    cnt = present.sum(axis=0)
    for d in range(3):  # the edge from (i - e_d) to i also belongs to voxel i
        sl_dst = [slice(None)] * 3
        sl_src = [slice(None)] * 3
        sl_dst[d] = slice(1, None)
        sl_src[d] = slice(None, -1)
        acc[tuple(sl_dst)] += q[d][tuple(sl_src)]
        cnt[tuple(sl_dst)] += present[d][tuple(sl_src)]
    return np.where(cnt > 0, acc / np.maximum(cnt, 1.0), 0.0).astype(np.float32)


def mask_from_magnitude_and_quality(
    magnitude: np.ndarray | None,
    phase: np.ndarray,
    voxel_size: tuple[float, float, float],
    echo_times: Sequence[float] | None = None,
    *,
    quality_threshold: float = 0.5,
    quality_smooth_voxels: int = 3,
    hole_radius_mm: float = 4.0,
    threshold_scale: float = 1.0,
    erode_mm: float = 4.0,
    smooth_mm: float = 1.0,
    shrink_voxels: int = 1,
) -> np.ndarray:
    """Brain mask: the magnitude mask intersected with a thresholded phase-quality map.

    Follows the 2024 QSM consensus recommendation (QSM Consensus Organization Committee,
    MRM 2024;91:1834, doi:10.1002/mrm.30006) of brain extraction plus phase-quality
    masking, as QSMxT does with ROMEO's quality map. Steps:

    1. magnitude mask (:func:`mask_from_magnitude`, without its final shrink); without
       magnitude images, the phase-coherence mask (:func:`mask_from_phase`);
    2. phase quality (:func:`phase_quality`), averaged over ``quality_smooth_voxels``^3,
       and thresholded at ``quality_threshold``;
    3. the low-quality voxels of the magnitude mask are removed only where they form
       regions that hold a ball of radius ``hole_radius_mm`` (morphological opening of the
       low-quality set): isolated low-quality voxels and thin rims are filled back, large
       unreliable regions (air/noise, tissue next to sinuses) stay out;
    4. an opening by ``erode_mm`` keeps the largest connected component (as in
       :func:`mask_from_magnitude`; it separates brain and scalp once the skull's noisy
       phase is removed), then the surface is smoothed (``smooth_mm``) and shrunk by
       ``shrink_voxels``.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) float array or None
        Magnitude (any scale); None: phase-only data.
    phase : (X, Y, Z) or (X, Y, Z, E) float array
        Wrapped phase in rad.
    voxel_size : 3 floats
        Voxel size in mm.
    echo_times : E floats or None, default None
        Echo times in s (adds the echo-gradient coherence to the quality when E >= 2).
    quality_threshold : float, default 0.5
        Minimum (smoothed) phase quality in [0, 1] of a reliable voxel.
    quality_smooth_voxels : int, default 3
        Edge of the box average applied to the quality map before thresholding (1: none).
    hole_radius_mm : float, default 4.0
        Low-quality regions are excluded only where they contain a ball of this radius (mm).
    threshold_scale : float, default 1.0
        As in :func:`mask_from_magnitude`.
    erode_mm : float, default 4.0
        As in :func:`mask_from_magnitude`.
    smooth_mm : float, default 1.0
        Sigma (mm) of the Gaussian smoothing of the final surface (0: none).
    shrink_voxels : int, default 1
        Final erosion in voxels (partial-volume rim; see :func:`mask_from_magnitude`).

    Returns
    -------
    (X, Y, Z) bool array
        The brain mask.
    """
    vox = tuple(float(v) for v in voxel_size)
    if len(vox) != 3:
        raise ValueError(f"voxel_size must have 3 values; got {voxel_size}")
    # Step 1: magnitude (or phase-coherence) brain mask, unshrunk
    if magnitude is not None:
        base = mask_from_magnitude(
            magnitude,
            vox,
            threshold_scale=threshold_scale,
            erode_mm=erode_mm,
            smooth_mm=smooth_mm,
            shrink_voxels=0,
        )
    else:
        base = mask_from_phase(phase, vox, erode_mm=erode_mm, smooth_mm=smooth_mm, shrink_voxels=0)
    if not base.any():
        return base
    # Step 2: thresholded phase quality
    q = phase_quality(phase, echo_times)
    if quality_smooth_voxels > 1:
        q = ndimage.uniform_filter(q, size=int(quality_smooth_voxels), mode="nearest")
    low = base & ~(q > quality_threshold)
    # Step 3: keep out only the low-quality regions that hold a ball of hole_radius_mm
    if hole_radius_mm > 0 and low.any():
        core = ndimage.distance_transform_edt(low, sampling=vox) > hole_radius_mm
        large = (ndimage.distance_transform_edt(~core, sampling=vox) <= hole_radius_mm) & low
    else:
        large = low
    brain = base & ~large
    # Step 4: opening by erode_mm restricted to the largest component (cuts the thin
    # bridges of reliable phase between brain and scalp), smooth surface, shrink
    brain = _ball_open_largest(brain, vox, erode_mm)
    if smooth_mm > 0:
        sig = [smooth_mm / v for v in vox]
        brain = ndimage.gaussian_filter(brain.astype(np.float32), sig, mode="nearest") > 0.5
        brain &= base
    if shrink_voxels > 0:
        brain = ndimage.binary_erosion(brain, iterations=shrink_voxels, border_value=1)
    return brain
