"""Accuracy metrics of a susceptibility map against a known truth (QSM challenge definitions).

The measures of the QSM reconstruction challenges:

* 2016 challenge (Langkammer et al., "Quantitative susceptibility mapping: report from the
  2016 reconstruction challenge", MRM 2018;79:1661-1673): (N)RMSE, HFEN (a Laplacian of
  Gaussian high-pass, sigma 1.5 voxels, 15^3 kernel), SSIM and region errors.
* 2019 challenge 2.0 (QSM Challenge 2.0 Organization Committee: Bilgic, Langkammer, Marques,
  Meineke, Milovic, Schweser, "QSM reconstruction challenge 2.0: design and report of
  results", MRM 2021;86:1241-1255; phantom and metric set in Marques et al., "QSM
  reconstruction challenge 2.0: a realistic in silico head phantom for MRI data simulation
  and evaluation of susceptibility mapping procedures", MRM 2021;86:526-542): demeaned and
  detrended NRMSE, deep grey matter (DGM) slope error, calcification moment and streaking.
* XSIM (Milovic et al., "XSIM: a structural similarity index measure optimized for MRI
  QSM", MRM 2024): SSIM on the unscaled ppm values with a 5^3 window, L = 1, K1 = 0.01,
  K2 = 0.001.

Everything here is a pure function of numpy arrays (susceptibility in ppm, boolean masks,
integer label maps). QSM is defined only up to a constant, so the NRMSE-type measures
remove each map's mean inside the mask; XSIM is not offset invariant, so callers reference
both maps the same way first (:func:`qsm_bids.evaluate.evaluate_maps` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

# --------------------------------------------------------------------------------------
# Masks and the demeaned NRMSE (used by the pipeline tests)
# --------------------------------------------------------------------------------------


def evaluation_mask(mask: np.ndarray, erode_voxels: int = 3) -> np.ndarray:
    """The mask eroded by ``erode_voxels`` (6-connected steps), where metrics are taken.

    Parameters
    ----------
    mask : ndarray (X, Y, Z)
        Brain mask (nonzero = inside).
    erode_voxels : int, default 3
        Number of 6-connected erosion steps; 0 or less returns the mask unchanged.

    Returns
    -------
    ndarray of bool (X, Y, Z)
    """
    mask = np.asarray(mask, dtype=bool)
    if erode_voxels <= 0:
        return mask
    return ndimage.binary_erosion(mask, iterations=erode_voxels)


def nrmse(x: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Normalised RMS error in percent, both maps demeaned inside ``mask``.

    ``100 * ||(x - mean x) - (t - mean t)|| / ||t - mean t||`` over the voxels of ``mask``
    (the "NRMSE" of the QSM challenge 2.0, Bilgic et al. MRM 2021;86:1241; the 2016
    challenge's RMSE, Langkammer et al. MRM 2018;79:1661, is the same ratio).

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    mask : ndarray (X, Y, Z)
        Voxels to compare (nonzero = inside).

    Returns
    -------
    float
        NRMSE (%); 0 for identical maps, 100 for a constant estimate.
    """
    m = np.asarray(mask, dtype=bool)
    xs = np.asarray(x)[m].astype(np.float64)
    ts = np.asarray(truth)[m].astype(np.float64)
    xs = xs - xs.mean()
    ts = ts - ts.mean()
    return float(100.0 * np.linalg.norm(xs - ts) / np.linalg.norm(ts))


def region_means(
    chi: np.ndarray, labels: np.ndarray, mask: np.ndarray, names: Mapping[int, str]
) -> dict[str, float]:
    """Mean of ``chi`` (ppm) in each labelled region, restricted to ``mask``.

    Regions with no voxel inside the mask are left out.
    """
    m = np.asarray(mask, dtype=bool)
    out: dict[str, float] = {}
    for label, name in names.items():
        sel = (labels == label) & m
        if sel.any():
            out[name] = float(np.mean(chi[sel], dtype=np.float64))
    return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _masked_pair(
    x: np.ndarray, truth: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies of both maps and the boolean mask, shapes checked."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if x.shape != t.shape or x.shape != m.shape:
        raise ValueError(f"shape mismatch: estimate {x.shape}, truth {t.shape}, mask {m.shape}")
    return x, t, m


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Ordinary least-squares line ``y ~ slope * x + intercept``.

    The regression used by the challenge 2.0 detrended NRMSE, DGM slope and calcification
    streaking (Bilgic et al. MRM 2021;86:1241), with ``x`` the truth.

    Parameters
    ----------
    x, y : ndarray
        Paired samples (any shape, flattened; e.g. ppm).

    Returns
    -------
    (slope, intercept) : tuple of float
        ``(nan, nan)`` when ``x`` has fewer than two samples or no spread.
    """
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.size < 2:
        return math.nan, math.nan
    xm, ym = xs.mean(), ys.mean()
    dx = xs - xm
    sxx = float(np.dot(dx, dx))
    if sxx <= 1e-30 * xs.size:
        return math.nan, math.nan
    slope = float(np.dot(dx, ys - ym)) / sxx
    return slope, float(ym - slope * xm)


# --------------------------------------------------------------------------------------
# Global agreement: detrended NRMSE, correlation, HFEN, XSIM
# --------------------------------------------------------------------------------------


def nrmse_detrended(x: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """NRMSE (%) after removing the linear trend between estimate and truth.

    QSM challenge 2.0 "detrended NRMSE" (Bilgic et al. MRM 2021;86:1241; Marques et al.
    MRM 2021;86:526): both maps are demeaned inside ``mask``, the estimate is regressed on
    the truth, ``x_dm ~ a * t_dm + b``, and the corrected estimate ``(x_dm - b) / a`` is
    scored like :func:`nrmse`. It therefore ignores a global scaling (over-regularisation,
    a wrong field strength) and measures only the structural error.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    mask : ndarray (X, Y, Z)
        Voxels to compare.

    Returns
    -------
    float
        Detrended NRMSE (%): 0 for ``x = c * truth + d`` with any ``c != 0``. When the slope
        is zero or undefined the plain demeaned NRMSE is returned; ``nan`` for an empty
        mask or a constant truth.
    """
    x, t, m = _masked_pair(x, truth, mask)
    if not m.any():
        return math.nan
    xs = x[m] - x[m].mean()
    ts = t[m] - t[m].mean()
    norm_t = float(np.linalg.norm(ts))
    if norm_t < 1e-30:
        return math.nan
    # Step 1: linear regression of the estimate on the truth.
    slope, intercept = linear_fit(ts, xs)
    if not math.isfinite(slope) or abs(slope) < 1e-30:
        return float(100.0 * np.linalg.norm(xs - ts) / norm_t)
    # Step 2: invert the trend, then the usual normalised error.
    corrected = (xs - intercept) / slope
    return float(100.0 * np.linalg.norm(corrected - ts) / norm_t)


def correlation(x: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation coefficient of estimate and truth inside ``mask``.

    Reported by the QSM challenge 2.0 and QSM-CI (Bilgic et al. MRM 2021;86:1241).

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm; the coefficient is unitless and offset/scale invariant).
    mask : ndarray (X, Y, Z)
        Voxels to compare.

    Returns
    -------
    float
        In [-1, 1]; ``nan`` for an empty mask or a constant map.
    """
    x, t, m = _masked_pair(x, truth, mask)
    if not m.any():
        return math.nan
    xs = x[m] - x[m].mean()
    ts = t[m] - t[m].mean()
    den = float(np.linalg.norm(xs) * np.linalg.norm(ts))
    if den < 1e-300:
        return math.nan
    return float(np.dot(xs, ts) / den)


def laplacian_of_gaussian(
    volume: np.ndarray, *, sigma_voxels: float = 1.5, kernel_size: int = 15
) -> np.ndarray:
    """Laplacian-of-Gaussian filtered volume, with the 2016 QSM challenge's HFEN kernel.

    The kernel (Langkammer et al. MRM 2018;79:1661, after Ravishankar and Bresler, IEEE
    TMI 2011) is ``h(r) * (|r|^2 / sigma^4 - 3 / sigma^2)`` on a ``kernel_size^3`` grid,
    with ``h`` the Gaussian normalised to unit sum on that grid, minus its own mean so that
    it sums to zero. Zero padding outside the volume (MATLAB ``imfilter`` default). The
    kernel is separable apart from the constant, so it is applied as 1D passes plus a box
    sum (exact, and fast on whole-head volumes).

    Parameters
    ----------
    volume : ndarray (X, Y, Z)
        Input map (e.g. ppm).
    sigma_voxels : float, default 1.5
        Gaussian width (voxels).
    kernel_size : int, default 15
        Odd kernel edge length (voxels).

    Returns
    -------
    ndarray of float64 (X, Y, Z)
        Filtered volume (input units per voxel^2).
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    if sigma_voxels <= 0:
        raise ValueError(f"sigma_voxels must be positive, got {sigma_voxels}")
    v = np.asarray(volume, dtype=np.float64)
    half = kernel_size // 2
    r = np.arange(-half, half + 1, dtype=np.float64)
    s2 = sigma_voxels * sigma_voxels
    g = np.exp(-0.5 * r * r / s2)
    g /= g.sum()  # the 3D Gaussian normalised on the cube = product of these
    d2 = g * (r * r / (s2 * s2) - 1.0 / s2)  # each axis's share of the LoG factor

    def c1d(a: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
        return ndimage.correlate1d(a, w, axis=axis, mode="constant", cval=0.0)

    # sum over axes of (second-derivative factor along that axis) x (Gaussian along others)
    g0 = c1d(v, g, 0)
    out = c1d(c1d(g0, g, 1), d2, 2)
    out += c1d(c1d(g0, d2, 1), g, 2)
    del g0
    out += c1d(c1d(c1d(v, d2, 0), g, 1), g, 2)
    # zero-sum correction: subtract mean(kernel) * (box sum of the volume)
    kernel_mean = 3.0 * float(d2.sum()) / kernel_size**3
    if kernel_mean != 0.0:
        box = v
        for axis in range(v.ndim):
            box = c1d(box, np.ones(kernel_size), axis)
        out -= kernel_mean * box
    return out


def hfen(
    x: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    *,
    sigma_voxels: float = 1.5,
    kernel_size: int = 15,
    demean: bool = True,
) -> float:
    """High-frequency error norm (%), the 2016 QSM challenge's HFEN.

    ``100 * ||LoG(x) - LoG(t)|| / ||LoG(t)||`` over the voxels of ``mask``, with the
    Laplacian-of-Gaussian of :func:`laplacian_of_gaussian` (sigma 1.5 voxels, 15^3 kernel;
    Langkammer et al. MRM 2018;79:1661). As in the challenge, the maps are filtered after
    masking (set to 0 outside ``mask``), so nothing beyond the brain edge enters.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    mask : ndarray (X, Y, Z)
        Voxels to compare.
    sigma_voxels : float, default 1.5
        LoG width (voxels).
    kernel_size : int, default 15
        LoG kernel edge (voxels, odd).
    demean : bool, default True
        Remove each map's mean inside ``mask`` first (QSM is defined up to a constant; an
        offset would otherwise show as an edge at the mask border).

    Returns
    -------
    float
        HFEN (%): 0 for identical maps; ``nan`` for an empty mask or a flat truth.
    """
    x, t, m = _masked_pair(x, truth, mask)
    if not m.any():
        return math.nan
    if demean:
        x = x - x[m].mean()
        t = t - t[m].mean()
    x = np.where(m, x, 0.0)
    t = np.where(m, t, 0.0)
    # the filter is linear: filter the error and the truth once each
    log_err = laplacian_of_gaussian(x - t, sigma_voxels=sigma_voxels, kernel_size=kernel_size)
    log_t = laplacian_of_gaussian(t, sigma_voxels=sigma_voxels, kernel_size=kernel_size)
    den = float(np.linalg.norm(log_t[m]))
    if den < 1e-30:
        return math.nan
    return float(100.0 * np.linalg.norm(log_err[m]) / den)


def xsim(
    x: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    *,
    window: int = 5,
    dynamic_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.001,
) -> float:
    """XSIM: the structural similarity index adapted to QSM (Milovic et al., MRM 2024).

    SSIM (Wang et al., IEEE TIP 2004) with the changes of XSIM: the maps are used in ppm
    without rescaling, ``L = 1`` (ppm), ``K1 = 0.01``, ``K2 = 0.001`` (so ``C1 = 1e-4``,
    ``C2 = 1e-6``), and the combined form
    ``(2 mu_x mu_t + C1)(2 cov + C2) / ((mu_x^2 + mu_t^2 + C1)(var_x + var_t + C2))``
    with the local statistics over a uniform 3D ``window^3`` neighbourhood (population
    variances; windows cut at the volume's edge use only their in-volume voxels). Both maps
    are set to 0 outside ``mask`` and the index map is averaged over ``mask``. The 2016
    challenge used the original SSIM (Langkammer et al. MRM 2018;79:1661), which XSIM
    replaces.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm), referenced the same way (XSIM is not offset invariant).
    mask : ndarray (X, Y, Z)
        Voxels to average over.
    window : int, default 5
        Edge of the cubic window (voxels).
    dynamic_range : float, default 1.0
        ``L`` (ppm).
    k1, k2 : float, default 0.01, 0.001
        Stabilising constants, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.

    Returns
    -------
    float
        Mean index over ``mask``; 1 for identical maps; ``nan`` for an empty mask.
    """
    x, t, m = _masked_pair(x, truth, mask)
    if not m.any():
        return math.nan
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c1 = (k1 * dynamic_range) ** 2
    c2 = (k2 * dynamic_range) ** 2
    x = np.where(m, x, 0.0)
    t = np.where(m, t, 0.0)

    def local_sum(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=window, mode="constant", cval=0.0)

    # in-volume voxel fraction of each window, to average over the truncated windows
    count = np.maximum(local_sum(np.ones(x.shape)), 1e-12)
    mu_x = local_sum(x) / count
    mu_t = local_sum(t) / count
    var_x = local_sum(x * x) / count - mu_x * mu_x
    var_t = local_sum(t * t) / count - mu_t * mu_t
    cov = local_sum(x * t) / count - mu_x * mu_t
    num = (2.0 * mu_x * mu_t + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_t * mu_t + c1) * (var_x + var_t + c2)
    return float(np.mean(num[m] / den[m]))


# --------------------------------------------------------------------------------------
# Region measures: DGM slope, region table, calcification
# --------------------------------------------------------------------------------------


def _region_pairs(
    x: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    region_labels: Sequence[int],
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean truth and estimate (ppm) of each listed label present (inside ``mask``)."""
    lab = np.asarray(labels)
    sel_all = np.ones(lab.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    tm, xm = [], []
    for label in region_labels:
        sel = (lab == label) & sel_all
        if sel.any():
            tm.append(float(np.mean(truth[sel], dtype=np.float64)))
            xm.append(float(np.mean(x[sel], dtype=np.float64)))
    return np.asarray(tm), np.asarray(xm)


def dgm_slope(
    x: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    region_labels: Sequence[int],
    mask: np.ndarray | None = None,
) -> float:
    """Slope of the region means of the estimate regressed on those of the truth.

    QSM challenge 2.0 "DGM slope" (Bilgic et al. MRM 2021;86:1241): the mean
    susceptibility of each deep grey matter nucleus in the estimate against the truth,
    fitted by least squares ``x_mean ~ slope * t_mean + intercept``; 1 means that the
    contrast between nuclei is preserved, below 1 that it is underestimated.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    labels : ndarray of int (X, Y, Z)
        Segmentation.
    region_labels : sequence of int
        Label values of the deep grey nuclei (labels absent from the map are skipped).
    mask : ndarray (X, Y, Z) or None, default None
        Restrict each region to this mask.

    Returns
    -------
    float
        Slope (unitless); ``nan`` with fewer than two regions or equal truth means.
    """
    tm, xm = _region_pairs(np.asarray(x), np.asarray(truth), labels, region_labels, mask)
    return linear_fit(tm, xm)[0]


def dgm_slope_error(
    x: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    region_labels: Sequence[int],
    mask: np.ndarray | None = None,
) -> float:
    """Deep grey matter slope error ``|1 - slope|`` (QSM challenge 2.0).

    The challenge 2.0 "DGM slope error" (Bilgic et al. MRM 2021;86:1241; Marques et al.
    MRM 2021;86:526) with the slope of :func:`dgm_slope`.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    labels : ndarray of int (X, Y, Z)
        Segmentation.
    region_labels : sequence of int
        Label values of the deep grey nuclei.
    mask : ndarray (X, Y, Z) or None, default None
        Restrict each region to this mask.

    Returns
    -------
    float
        ``|1 - slope|`` (unitless, 0 is perfect); ``nan`` with fewer than two regions.
    """
    return abs(1.0 - dgm_slope(x, truth, labels, region_labels, mask))


def region_error_table(
    x: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    names: Mapping[int, str],
    mask: np.ndarray,
    *,
    demean: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean estimate, mean truth and their difference in each labelled region (ppm).

    The region (ROI) error of the 2016 challenge (Langkammer et al. MRM 2018;79:1661) and
    the per-nucleus values behind the challenge 2.0 DGM measures.

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm).
    labels : ndarray of int (X, Y, Z)
        Segmentation.
    names : mapping int -> str
        Region label -> name; regions without voxels inside ``mask`` are left out.
    mask : ndarray (X, Y, Z)
        Evaluation mask; each region is restricted to it.
    demean : bool, default True
        Subtract each map's mean over ``mask`` first (both maps referenced to the
        evaluated brain's mean; QSM is defined only up to a constant).

    Returns
    -------
    dict
        ``name -> {"estimate_ppm", "truth_ppm", "error_ppm" (estimate - truth),
        "voxels"}``, in the order of ``names``.
    """
    m = np.asarray(mask, dtype=bool)
    x = np.asarray(x)
    t = np.asarray(truth)
    shift_x = float(np.mean(x[m], dtype=np.float64)) if demean and m.any() else 0.0
    shift_t = float(np.mean(t[m], dtype=np.float64)) if demean and m.any() else 0.0
    lab = np.asarray(labels)
    out: dict[str, dict[str, float]] = {}
    for label, name in names.items():
        sel = (lab == label) & m
        n = int(sel.sum())
        if n == 0:
            continue
        est = float(np.mean(x[sel], dtype=np.float64)) - shift_x
        tru = float(np.mean(t[sel], dtype=np.float64)) - shift_t
        out[name] = {"estimate_ppm": est, "truth_ppm": tru, "error_ppm": est - tru, "voxels": n}
    return out


class CalcificationScores(NamedTuple):
    """Challenge 2.0 calcification measures (see :func:`calcification_streaking`)."""

    #: SD of the regression residual in the rim / |mean estimated calcification| (unitless).
    streaking: float
    #: |truth moment - estimated moment| (ppm * mm^3, or ppm * voxel with unit volume).
    moment_error: float
    #: Sum of the truth over the calcification (same units as ``moment_error``).
    truth_moment: float
    #: Sum of the estimate over the voxels segmented as calcification.
    estimate_moment: float
    #: Threshold that segmented the calcification in the estimate (ppm).
    threshold_ppm: float
    #: Number of voxels segmented as calcification in the estimate.
    voxels: int


def _grow_box(
    lo: np.ndarray, hi: np.ndarray, margin: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A half-open box [lo, hi) grown by ``margin`` voxels per side, clipped to ``shape``."""
    return np.maximum(lo - margin, 0), np.minimum(hi + margin, np.asarray(shape))


def _box_mask(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))] = True
    return out


def calcification_streaking(
    x: np.ndarray,
    truth: np.ndarray,
    calcification: np.ndarray,
    *,
    cube_margin_voxels: int = 3,
    rim_voxels: int = 4,
    outer_voxels: int = 4,
    threshold_step_ppm: float = 0.01,
    threshold_floor_ppm: float = -3.5,
    voxel_volume_mm3: float = 1.0,
) -> CalcificationScores:
    """Calcification streaking and moment error of the QSM challenge 2.0.

    The challenge 2.0 phantom holds a strongly diamagnetic calcification; the challenge
    scored how well its total "moment" (integrated susceptibility) is recovered and how much
    streaking it spreads into the tissue around it (Bilgic et al. MRM 2021;86:1241; Marques
    et al. MRM 2021;86:526). The paper describes the streaking as the standard deviation of
    the susceptibility in a rim around the calcification after linear regression against
    the truth, relative to the calcification's susceptibility, and the moment as the sum of
    the susceptibility of the voxels segmented as calcification in the reconstruction. The
    geometry and the segmentation threshold below are not given numerically in the paper;
    they follow the challenge's evaluation code as ported by QSM.rs and the QSM-CI scorer:

    1. Box: the bounding box of ``calcification`` grown by ``cube_margin_voxels``; rim:
       that box grown by ``rim_voxels`` minus the box; surround: the box grown by
       ``rim_voxels + outer_voxels`` minus the box (all clipped to the volume).
    2. Threshold: the least negative ``t`` in ``0, -step, -2 step, ...`` (down to
       ``threshold_floor_ppm``) below which no voxel of the surround falls; the voxels of
       the box with ``x < t`` are the estimated calcification.
    3. Moment error: ``|sum(truth over calcification) - sum(x over the estimated
       calcification)| * voxel_volume_mm3``.
    4. Streaking: in the rim, regress ``x ~ a * truth + b`` and take the (population) SD
       of the residual over ``|mean x over the estimated calcification|`` (where the truth
       is flat in the rim this is the SD of ``x`` there).

    Parameters
    ----------
    x, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm), referenced the same way (the threshold is absolute).
    calcification : ndarray (X, Y, Z)
        True calcification mask (nonzero = inside); a diamagnetic (negative) inclusion.
    cube_margin_voxels : int, default 3
        Margin of the box around the calcification (voxels).
    rim_voxels : int, default 4
        Thickness of the rim around the box (voxels).
    outer_voxels : int, default 4
        Extra thickness of the surround used to pick the threshold (voxels).
    threshold_step_ppm : float, default 0.01
        Step of the threshold search (ppm).
    threshold_floor_ppm : float, default -3.5
        Lowest threshold searched, used when the surround goes below it (ppm).
    voxel_volume_mm3 : float, default 1.0
        Voxel volume (mm^3) for the moments; 1 gives ppm * voxel.

    Returns
    -------
    CalcificationScores
        ``streaking`` (unitless), ``moment_error``, ``truth_moment``, ``estimate_moment``
        (ppm * mm^3), ``threshold_ppm`` and ``voxels``; fields are ``nan`` (``voxels`` 0)
        where undefined (no calcification, nothing below the threshold).
    """
    x, t, calc = _masked_pair(x, truth, calcification)
    nan = math.nan
    if not calc.any():
        return CalcificationScores(nan, nan, nan, nan, nan, 0)
    truth_moment = float(t[calc].sum()) * voxel_volume_mm3
    # Step 1: box, rim and surround around the calcification.
    idx = np.nonzero(calc)
    lo = np.array([int(i.min()) for i in idx])
    hi = np.array([int(i.max()) + 1 for i in idx])
    shape = x.shape
    box_lo, box_hi = _grow_box(lo, hi, cube_margin_voxels, shape)
    rim_lo, rim_hi = _grow_box(box_lo, box_hi, rim_voxels, shape)
    out_lo, out_hi = _grow_box(rim_lo, rim_hi, outer_voxels, shape)
    box = _box_mask(shape, box_lo, box_hi)
    rim = _box_mask(shape, rim_lo, rim_hi) & ~box
    surround = _box_mask(shape, out_lo, out_hi) & ~box
    # Step 2: adaptive threshold just below the surround's minimum, on the search grid.
    n_steps = int(math.floor(abs(threshold_floor_ppm) / threshold_step_ppm + 1e-9))
    grid = -np.arange(n_steps + 1) * threshold_step_ppm
    low = float(x[surround].min()) if surround.any() else math.inf
    ok = grid <= low
    threshold = float(grid[int(np.argmax(ok))]) if ok.any() else float(threshold_floor_ppm)
    seg = x[box]
    seg = seg[seg < threshold]
    if seg.size == 0:
        return CalcificationScores(nan, abs(truth_moment), truth_moment, 0.0, threshold, 0)
    calc_mean = float(seg.mean())
    estimate_moment = float(seg.sum()) * voxel_volume_mm3
    moment_error = abs(truth_moment - estimate_moment)
    # Step 4: residual SD of the rim after regression on the truth.
    slope, intercept = linear_fit(t[rim], x[rim])
    if not math.isfinite(slope):  # flat truth in the rim: the SD of the estimate itself
        slope, intercept = 0.0, float(x[rim].mean()) if rim.any() else 0.0
    if rim.sum() < 2 or abs(calc_mean) < 1e-30:
        streak = nan
    else:
        resid = x[rim] - (slope * t[rim] + intercept)
        streak = float(np.std(resid)) / abs(calc_mean)
    return CalcificationScores(
        streak, moment_error, truth_moment, estimate_moment, threshold, int(seg.size)
    )
