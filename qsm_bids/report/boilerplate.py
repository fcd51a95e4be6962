"""The methods text ("boilerplate") of a run, with references, for users to paste into a paper.

Built from the provenance that every sidecar carries (:meth:`qsm_bids.recipe.Recipe.provenance`:
``{"Pipeline": name, "<stage>": {"Algorithm": ..., "Parameters": {...}}}``), in the manner of
fMRIPrep's ``CITATION.md``: what ran, each algorithm by its published name with the paper it
comes from, the parameters that matter with their units, the template, the atlas and the
software with versions. :func:`build_boilerplate` returns it as Markdown, an HTML fragment and
BibTeX; :func:`write_citation_files` writes ``CITATION.md``, ``CITATION.html`` and
``CITATION.bib`` into the run's log folder.

The prose is written once per algorithm in :data:`ALGORITHMS` (name, references, and a
function of the resolved parameters); citations are markers (``⟦key⟧``) resolved at the end
into author-year labels, with ``a``/``b`` suffixes where two cited papers share them, and
numbered in order of first citation. The bibliography is :mod:`.references`.
"""

from __future__ import annotations

import html
import importlib.metadata
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsm_bids.registration.template import TEMPLATE_SPACE
from qsm_bids.report.references import REFERENCES, Reference, labels

__all__ = [
    "ALGORITHMS",
    "AlgorithmText",
    "Boilerplate",
    "algorithm_name",
    "build_boilerplate",
    "default_versions",
    "format_value",
    "write_citation_files",
]


#: Distributions whose versions the text reports (display name -> distribution name).
SOFTWARE = {
    "qsm_bids": "qsm_bids",
    "Nipype": "nipype",
    "ANTsPy": "antspyx",
    "NumPy": "numpy",
    "NiBabel": "nibabel",
}

_MARK = re.compile(r"⟦([A-Za-z0-9_]+)⟧")


def _cite(*keys: str) -> str:
    """Citation markers for ``keys`` (resolved into labels by :func:`_resolve`)."""
    return "; ".join(f"⟦{k}⟧" for k in keys)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def format_value(value: Any) -> str:
    """A parameter value as the text writes it.

    Integers as they are; floats with up to four significant digits, in ``a×10ⁿ`` form when
    below 10⁻³ or at least 10⁴; sequences joined by commas.

    Parameters
    ----------
    value : int, float, str or sequence of them

    Returns
    -------
    str
    """
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, bool) or isinstance(value, int | str):
        return str(value)
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e4:
        mantissa, exponent = f"{v:.3e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        power = str(int(exponent)).translate(_SUPERSCRIPT)
        return f"10{power}" if mantissa == "1" else f"{mantissa}×10{power}"
    return f"{v:.4g}"


_f = format_value


def _plural(n: int, word: str) -> str:
    """``"1 voxel"``, ``"2 voxels"``, ``"2 passes"``, ``"4 echoes"``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith(("s", "o")) else f"{n} {word}s"


def _mm(value: Any) -> str:
    """A length or per-axis lengths in mm: ``"5 mm"``, ``"5 mm"`` for (5, 5, 5), else listed."""
    if isinstance(value, list | tuple) and value and all(v == value[0] for v in value):
        value = value[0]
    return f"{_f(value)} mm"


def _percent(fraction: float) -> str:
    return f"{_f(100 * float(fraction))}%"


# --------------------------------------------------------------------------------------------
# One entry per algorithm of the registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlgorithmText:
    """How the methods text names and describes one algorithm.

    Attributes
    ----------
    name : str
        The published name (with its abbreviation), e.g. "projection onto dipole fields
        (PDF)".
    references : tuple of str
        Keys of :data:`~qsm_bids.report.references.REFERENCES` it always cites.
    describe : callable
        Resolved parameters -> the sentence(s) describing what ran, with citation markers.
    """

    name: str
    references: tuple[str, ...]
    describe: Callable[[Mapping[str, Any]], str]


# --- mask -----------------------------------------------------------------------------------


def _mask_cleanup(p: Mapping[str, Any]) -> str:
    parts = [
        f"a morphological opening with a {_f(p['erode_mm'])} mm radius that kept the largest "
        "connected component"
    ]
    if p.get("fill_holes", True):
        parts.append(
            "hole filling in 3D and within single slices"
            if p.get("fill_slicewise")
            else "hole filling in 3D"
        )
    if float(p.get("smooth_mm", 0)) > 0:
        parts.append(f"Gaussian smoothing of its surface (σ = {_f(p['smooth_mm'])} mm)")
    if int(p.get("shrink_voxels", 0)) > 0:
        parts.append(f"a final erosion by {_plural(int(p['shrink_voxels']), 'voxel')}")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def _scaled(p: Mapping[str, Any]) -> str:
    scale = float(p.get("threshold_scale", 1.0))
    return "" if scale == 1.0 else f"scaled by {_f(scale)}, "


def _mask_magnitude(p: Mapping[str, Any]) -> str:
    source = (
        "the root-sum-of-squares of the magnitude images over echoes"
        if p["combine"] == "rss"
        else "the first-echo magnitude image"
    )
    return (
        "A brain mask (the brain extraction that the QSM consensus recommends; "
        f"{_cite('consensus2024')}) was computed from {source} by an automatic intensity "
        "threshold "
        f"({_scaled(p)}at most {_percent(p['threshold_fraction'])} of the "
        f"{_f(p['percentile'])}th intensity percentile), followed by {_mask_cleanup(p)}."
    )


def _mask_quality(p: Mapping[str, Any]) -> str:
    return (
        "The brain mask combined brain extraction with phase-quality masking, as the QSM "
        f"consensus recommends ({_cite('consensus2024')}) and as QSMxT does "
        f"({_cite('stewart2022qsmxt')}): a mask computed from the magnitude images by an "
        f"automatic intensity threshold{' (' + _scaled(p)[:-2] + ')' if _scaled(p) else ''} "
        "was intersected with a voxel quality "
        "map of the wrapped phase, built from the edge reliabilities of ROMEO "
        f"({_cite('dymerska2021romeo')}: phase coherence, phase linearity and, with several "
        "echoes, the coherence of the first two echoes' phase gradients), averaged over "
        f"{p['quality_smooth_voxels']}³ voxels and thresholded at "
        f"{_f(p['quality_threshold'])}. Low-quality voxels were excluded only where they "
        f"formed regions holding a ball of {_f(p['hole_radius_mm'])} mm radius; the result "
        f"then underwent {_mask_cleanup({**p, 'fill_holes': False})}."
    )


def _mask_phase(p: Mapping[str, Any]) -> str:
    return (
        "A brain mask was computed from the wrapped phase alone: voxels whose local phase "
        "coherence (3×3×3 neighbourhood, first two echoes) exceeded "
        f"{_f(p['coherence_threshold'])} were kept, followed by {_mask_cleanup(p)}; the QSM "
        f"consensus ({_cite('consensus2024')}) recommends such phase-based masking."
    )


# --- unwrapping -----------------------------------------------------------------------------


def _multi_echo(p: Mapping[str, Any]) -> str:
    strategy = p.get("echo_strategy", "template")
    if strategy == "individual":
        text = (
            "Every echo was unwrapped spatially and its global 2π offset set from the "
            "linear phase evolution over echo time"
        )
    else:
        text = (
            "With several echoes, the first echo and the phase difference between the first "
            "two echoes were unwrapped spatially"
        )
        if strategy == "template":
            text += (
                "; the one with the shorter effective echo time served as a template from "
                "which the other was derived voxel by voxel"
            )
        text += ", and later echoes were unwrapped in time against the linear prediction"
    if p.get("center_frequency", False):
        text += (
            "; the global 2π ambiguity of the difference phase was resolved by placing the "
            "mean frequency of each mask component within half a cycle of 0 Hz"
        )
    return text + "."


def _unwrap_region_growing(p: Mapping[str, Any]) -> str:
    weights = ["phase coherence"]
    if p["linearity_weights"]:
        weights.append("phase linearity")
    if p["magnitude_weights"]:
        weights.append("magnitude coherence")
    if p["gradient_weights"]:
        weights.append("the coherence of the first two echoes' phase gradients")
    text = (
        "Phase was unwrapped exactly (in integer multiples of 2π) by quality-guided region "
        "growing after ROMEO, the rapid opensource minimum spanning tree algorithm "
        f"({_cite('dymerska2021romeo')}), with edge weights combining "
        f"{', '.join(weights[:-1]) + ' and ' + weights[-1] if len(weights) > 1 else weights[0]}"
    )
    if p["extrapolate"]:
        text += (
            "; where the phase was steep along the growth direction, new voxels were unwrapped "
            "against a linear extrapolation"
        )
    return text + ". " + _multi_echo(p)


def _unwrap_laplacian(p: Mapping[str, Any]) -> str:
    if p["use_mask"]:
        solver = (
            "solved inside the mask as a weighted least-squares problem by DCT-preconditioned "
            f"conjugate gradients (at most {p['max_iter']} iterations, relative tolerance "
            f"{_f(p['tol'])})"
        )
    else:
        solver = "solved directly over the whole grid"
    text = (
        "Phase was unwrapped with the Laplacian (least-squares) method "
        f"({_cite('schofield2003')}), {solver}"
    )
    if p["congruent"]:
        text += (
            "; each smooth estimate was then made congruent with the measured phase by adding "
            "the nearest integer multiple of 2π"
        )
    return text + ". " + _multi_echo(p)


# --- echo combination -----------------------------------------------------------------------


def _combine_weighted(p: Mapping[str, Any]) -> str:
    weighting = (
        "magnitude-weighted (weights proportional to the squared magnitude)"
        if p["magnitude_weighting"]
        else "unweighted"
    )
    offset = p["offset"]
    if offset == "mcpc3ds":
        sigma = p["offset_sigma_mm"]
        detrend = int(p["offset_detrend_order"])
        how = (
            "after the phase offset at zero echo time, estimated from the first two echoes as "
            f"in MCPC-3D-S ({_cite('eckstein2018aspire')})"
            + (f", detrended by a polynomial of degree {detrend}" if detrend >= 0 else "")
            + f" and smoothed with a Gaussian of σ = {_mm(sigma)}, had been subtracted from "
            "every echo; the fit then passed through the origin"
        )
    elif offset == "fit":
        how = "with a free intercept per voxel"
    else:
        how = "through the origin (no phase offset assumed)"
    return (
        f"The total field (Hz) was obtained by a voxel-wise {weighting} linear fit of the "
        f"unwrapped phase against echo time, {how}. The fit's residuals gave a map of the "
        "field's standard deviation."
    )


def _combine_nonlinear(p: Mapping[str, Any]) -> str:
    noise = {
        "residual": "the fit residuals",
        "magnitude": "the magnitude background",
        "auto": "the fit residuals (from the magnitude background with fewer than three echoes)",
    }.get(str(p["noise"]), str(p["noise"]))
    return (
        "The total field (Hz) was obtained by a nonlinear fit of the complex multi-echo signal "
        f"({_cite('liu2013nonlinear')}), solved voxel by voxel by Gauss-Newton (at most "
        f"{p['max_iter']} iterations, tolerance {_f(p['tol'])} cycles over the echo spread); "
        f"the field's standard deviation was estimated from {noise}, pooled with a Gaussian "
        f"of σ = {_f(p['noise_pool_mm'])} mm."
    )


# --- background field removal ---------------------------------------------------------------


def _weights_clause(p: Mapping[str, Any]) -> str:
    if p.get("data_weights"):
        return ", the data weighted by the inverse of the field's standard deviation"
    return ""


def _peel(p: Mapping[str, Any]) -> str:
    n = int(p.get("peel", 0))
    return f", and {_plural(n, 'boundary layer')} of the mask removed" if n > 0 else ""


def _bg_pdf(p: Mapping[str, Any]) -> str:
    return (
        "Background fields were removed by projection onto dipole fields (PDF; "
        f"{_cite('liu2011pdf')}), fitting dipole sources in a margin of "
        f"{_plural(int(p['padding']), 'voxel')} around the brain mask by conjugate gradients "
        "(at most "
        f"{p['max_iter']} iterations, relative tolerance {_f(p['tolerance'])})"
        f"{_weights_clause(p)}{_peel(p)}."
    )


def _bg_vsharp(p: Mapping[str, Any]) -> str:
    return (
        "Background fields were removed with variable-kernel sophisticated harmonic artifact "
        f"reduction for phase data (V-SHARP; {_cite('wu2012vsharp')}), which extends SHARP "
        f"({_cite('schweser2011sharp')}), using spherical mean value kernels of radii "
        f"{_f(p['radii_mm'])} mm and a deconvolution truncation threshold of "
        f"{_f(p['threshold'])}."
    )


def _bg_resharp(p: Mapping[str, Any]) -> str:
    return (
        "Background fields were removed with regularization-enabled SHARP (RESHARP; "
        f"{_cite('sun2014resharp')}), using a spherical mean value kernel of "
        f"{_f(p['radius_mm'])} mm radius and a Tikhonov weight of {_f(p['lambda_'])}, solved "
        f"by conjugate gradients (at most {p['max_iter']} iterations, relative tolerance "
        f"{_f(p['tol'])})."
    )


def _bg_ismv(p: Mapping[str, Any]) -> str:
    return (
        "Background fields were removed with the iterative spherical mean value method (iSMV; "
        f"{_cite('wen2014ismv')}), using a kernel of {_f(p['radius_mm'])} mm radius (at most "
        f"{p['max_iter']} iterations, relative tolerance {_f(p['tol'])})."
    )


def _bg_lbv(p: Mapping[str, Any]) -> str:
    return (
        "Background fields were removed by solving the Laplacian boundary value problem (LBV; "
        f"{_cite('zhou2014lbv')}) with multigrid-preconditioned conjugate gradients "
        f"({p['depth']} grid levels, at most {p['max_iter']} iterations, relative tolerance "
        f"{_f(p['tolerance'])}){_peel(p)}."
    )


def _bg_none(p: Mapping[str, Any]) -> str:
    return (
        "No separate background field removal was performed: the inversion below was applied "
        "to the total field and accounts for the background field itself."
    )


# --- dipole inversion -----------------------------------------------------------------------


def _auto_lambda(p: Mapping[str, Any], unit: str = "") -> str:
    if float(p.get("lambda_", 0)) > 0:
        return f"a regularisation weight λ = {_f(p['lambda_'])}{unit}"
    return (
        "a regularisation weight chosen from the data, "
        f"{_f(p['lambda_per_sigma'])} times the root-mean-square local field on the zero cone "
        "of the dipole kernel"
    )


def _tv_kind(p: Mapping[str, Any]) -> str:
    return "isotropic" if p.get("isotropic") else "anisotropic"


def _phase_scale(p: Mapping[str, Any]) -> str:
    s = float(p.get("phase_scale", 0))
    if s > 0:
        return f", the field being expressed as a phase of {_f(s)} rad per ppm"
    return ""


def _inv_tkd(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted to susceptibility by thresholded k-space division (TKD; "
        f"{_cite('shmueli2009tkd', 'wharton2010tkd')}) with a threshold of "
        f"{_f(p['threshold'])} on the dipole kernel."
    )


def _inv_tikhonov(p: Mapping[str, Any]) -> str:
    penalty = "gradient" if p["regularizer"] == "gradient" else "identity (L2 norm)"
    return (
        "The local field was inverted by closed-form Tikhonov (L2) regularisation "
        f"({_cite('bilgic2014l2')}) with a {penalty} penalty and λ = {_f(p['lambda_'])}."
    )


def _inv_tv_admm(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted by total-variation-regularised dipole inversion "
        f"({_cite('bilgic2014l1')}), solved by the alternating direction method of "
        f"multipliers with the variable splitting of FANSI ({_cite('milovic2018fansi')}), "
        f"using {_tv_kind(p)} total variation and {_auto_lambda(p, ' ppm')} (ADMM penalty "
        f"{_f(p['rho'])}, at most {p['max_iter']} iterations, relative tolerance "
        f"{_f(p['tol'])})."
    )


def _inv_nltv(p: Mapping[str, Any]) -> str:
    text = (
        "The local field was inverted by nonlinear total-variation dipole inversion, the fast "
        f"nonlinear susceptibility inversion (FANSI; {_cite('milovic2018fansi')})"
    )
    if p.get("weak_harmonic"):
        text += (
            " with a weak-harmonic term that fits a residual background field jointly "
            f"({_cite('milovic2019wh')}; β = {_f(p['beta'])}, μ = {_f(p['mu_h'])})"
        )
    return text + (
        f", using {_tv_kind(p)} total variation and {_auto_lambda(p)} (ADMM penalty "
        f"{_f(p['rho'])}, {_plural(int(p['newton_iter']), 'Newton step')} per iteration for "
        f"the nonlinear data term, at most {p['max_iter']} iterations, relative tolerance "
        f"{_f(p['tol'])}){_phase_scale(p)}."
    )


def _inv_rts(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted by the rapid two-step method (RTS; "
        f"{_cite('kames2018rts')}): a least-squares estimate of the well-conditioned "
        f"frequencies (|D| > {_f(p['delta'])}; {p['ls_iter']} conjugate-gradient iterations), "
        "then total-variation regularisation of the ill-conditioned ones by ADMM "
        f"(μ = {_f(p['mu'])}, initial penalty {_f(p['rho'])}, at most {p['max_iter']} "
        f"iterations, relative tolerance {_f(p['tol'])})."
    )


def _inv_ndi(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted by nonlinear dipole inversion (NDI; "
        f"{_cite('polak2020ndi')}), {p['max_iter']} gradient-descent steps of size "
        f"{_f(p['tau'])} with a Tikhonov weight α = {_f(p['alpha'])}{_phase_scale(p)}."
    )


def _inv_ilsqr(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted with iLSQR (" + _cite("li2015ilsqr") + "): a "
        "least-squares solution with Laplacian-based data weights (at most "
        f"{p['lsqr_iter']} iterations, tolerance {_f(p['lsqr_tol'])}) from which the "
        "streaking artifact, estimated on the ill-conditioned frequencies "
        f"(|D| < {_f(p['threshold'])}; at most {p['max_iter']} iterations, tolerance "
        f"{_f(p['tol'])}), was subtracted."
    )


def _inv_medi(p: Mapping[str, Any]) -> str:
    return (
        "The local field was inverted by morphology-enabled dipole inversion (MEDI; "
        f"{_cite('liu2011medi', 'liu2012medi')}) with the nonlinear data term "
        f"({_cite('liu2013nonlinear')}): λ = {_f(p['lambda_'])}, the "
        f"{_percent(p['edge_percentage'])} largest magnitude gradients exempted from the "
        f"total-variation penalty, at most {p['max_iter']} Gauss-Newton iterations (tolerance "
        f"{_f(p['tol'])}), each solved by at most {p['cg_max_iter']} conjugate-gradient "
        f"iterations (tolerance {_f(p['cg_tol'])}){_phase_scale(p)}."
    )


def _inv_sstv(p: Mapping[str, Any]) -> str:
    return (
        "The total field was inverted in a single step with total-variation regularisation "
        f"({_cite('chatnuntawech2017sstv')}), the background being suppressed by spherical "
        f"mean value high-pass filters of radii {_f(p['radii_mm'])} mm applied as in V-SHARP "
        f"({_cite('wu2012vsharp')}): λ = {_f(p['lambda_'])}, ADMM penalty {_f(p['rho'])}, "
        f"over-relaxation {_f(p['relaxation'])}, at most {p['max_iter']} iterations "
        f"(relative tolerance {_f(p['tol'])})."
    )


def _inv_tfi(p: Mapping[str, Any]) -> str:
    return (
        "The total field was inverted by preconditioned total field inversion (TFI; "
        f"{_cite('liu2017tfi')}) with the nonlinear data term of MEDI "
        f"({_cite('liu2013nonlinear')}), on the brain mask extended by "
        f"{_f(p['extension_mm'])} mm: λ = {_f(p['lambda_'])}, preconditioner "
        f"{_f(p['preconditioner'])} and regularisation weight {_f(p['outside_weight'])} "
        f"outside the brain, the {_percent(p['edge_percentage'])} "
        "largest magnitude gradients exempted from the penalty, at most "
        f"{p['max_iter']} Gauss-Newton iterations (tolerance {_f(p['tol'])}) of at most "
        f"{p['cg_max_iter']} conjugate-gradient iterations each{_phase_scale(p)}."
    )


def _inv_tgv(p: Mapping[str, Any]) -> str:
    return (
        "The field was inverted by total generalized variation (TGV-QSM; "
        f"{_cite('langkammer2015tgv')}) in the Laplacian domain, which is insensitive to "
        f"harmonic background fields: α₁ = {_f(p['alpha1'])}, α₀ = {_f(p['alpha0'])}, at "
        f"most {p['max_iter']} primal-dual iterations, the mask eroded by "
        f"{_plural(int(p['erode_voxels']), 'voxel')}"
        + (
            f", solved coarse to fine over {_plural(int(p['levels']), 'coarser grid')}"
            if int(p.get("levels", 0)) > 0
            else ""
        )
        + "."
    )


# --- referencing and R2* --------------------------------------------------------------------


def _ref_mean(p: Mapping[str, Any]) -> str:
    return (
        "Susceptibility values (ppm) were referenced to their mean over the whole brain mask, "
        f"a reference the QSM consensus asks to state ({_cite('consensus2024')})."
    )


def _ref_mask(p: Mapping[str, Any]) -> str:
    return (
        "Susceptibility values (ppm) were referenced to their mean over a user-supplied "
        f"reference region ({_cite('consensus2024')})."
    )


def _ref_csf(p: Mapping[str, Any]) -> str:
    return (
        "Susceptibility values (ppm) were referenced to automatically detected ventricular "
        f"cerebrospinal fluid ({_cite('straub2017', 'liu2018medi0', 'consensus2024')}): "
        f"voxels deeper below the mask surface than {_percent(p['min_depth'])} of the largest "
        f"depth, with R2* below {_f(p['r2star_max'])} s⁻¹ and a first-echo magnitude above "
        f"{_f(p['magnitude_min'])} times the brain median (without an R2* map, the "
        f"last-echo magnitude above its {_f(p['magnitude_percentile'])}th percentile), of "
        f"which the {_plural(int(p['max_components']), 'largest connected component')} "
        f"(each at least {_percent(p['min_fraction'])} of the brain volume) were kept and "
        f"eroded by {_plural(int(p['erode_voxels']), 'voxel')}. Where no such region was "
        "found (a slab or a crop), the whole-brain mean was used and the sidecar says so."
    )


def _r2s_arlo(p: Mapping[str, Any]) -> str:
    text = (
        "R2* (s⁻¹) and T2* (s) maps were computed from the magnitude images by "
        "auto-regression on linear operations (ARLO; "
        f"{_cite('pei2015arlo')}), capped at {_f(p['max_r2star'])} s⁻¹"
    )
    if p.get("fallback"):
        text += (
            "; with fewer than three echoes or echoes not equally spaced (relative tolerance "
            f"{_f(p['spacing_rtol'])}), a log-linear fit was used instead"
        )
    return text + "."


def _r2s_loglinear(p: Mapping[str, Any]) -> str:
    how = "magnitude-weighted (weights m²) " if p.get("weighted") else ""
    return (
        "R2* (s⁻¹) and T2* (s) maps were computed from the magnitude images by a "
        f"{how}log-linear least-squares fit, capped at {_f(p['max_r2star'])} s⁻¹."
    )


#: (stage, registry algorithm name) -> its published name, references and description.
ALGORITHMS: dict[tuple[str, str], AlgorithmText] = {
    ("mask", "magnitude"): AlgorithmText(
        "magnitude-threshold brain extraction", ("consensus2024",), _mask_magnitude
    ),
    ("mask", "magnitude_and_quality"): AlgorithmText(
        "brain extraction with phase-quality masking",
        ("consensus2024", "stewart2022qsmxt", "dymerska2021romeo"),
        _mask_quality,
    ),
    ("mask", "phase_quality"): AlgorithmText(
        "phase-coherence masking", ("consensus2024",), _mask_phase
    ),
    ("unwrap", "region_growing"): AlgorithmText(
        "ROMEO-style quality-guided region-growing unwrapping",
        ("dymerska2021romeo",),
        _unwrap_region_growing,
    ),
    ("unwrap", "laplacian"): AlgorithmText(
        "Laplacian (least-squares) phase unwrapping", ("schofield2003",), _unwrap_laplacian
    ),
    ("combine", "weighted_fit"): AlgorithmText(
        "magnitude-weighted linear echo fit with MCPC-3D-S phase-offset removal",
        ("eckstein2018aspire",),
        _combine_weighted,
    ),
    ("combine", "nonlinear_fit"): AlgorithmText(
        "nonlinear complex multi-echo fit", ("liu2013nonlinear",), _combine_nonlinear
    ),
    ("background", "pdf"): AlgorithmText(
        "projection onto dipole fields (PDF)", ("liu2011pdf",), _bg_pdf
    ),
    ("background", "vsharp"): AlgorithmText(
        "variable-kernel SHARP (V-SHARP)", ("wu2012vsharp", "schweser2011sharp"), _bg_vsharp
    ),
    ("background", "resharp"): AlgorithmText(
        "regularization-enabled SHARP (RESHARP)", ("sun2014resharp",), _bg_resharp
    ),
    ("background", "ismv"): AlgorithmText(
        "iterative spherical mean value (iSMV)", ("wen2014ismv",), _bg_ismv
    ),
    ("background", "lbv"): AlgorithmText(
        "Laplacian boundary value (LBV) background removal", ("zhou2014lbv",), _bg_lbv
    ),
    ("background", "none"): AlgorithmText(
        "no separate background field removal (single-step inversion)", (), _bg_none
    ),
    ("inversion", "tkd"): AlgorithmText(
        "thresholded k-space division (TKD)", ("shmueli2009tkd", "wharton2010tkd"), _inv_tkd
    ),
    ("inversion", "tikhonov"): AlgorithmText(
        "closed-form Tikhonov (L2) regularisation", ("bilgic2014l2",), _inv_tikhonov
    ),
    ("inversion", "tv_admm"): AlgorithmText(
        "total-variation (L1) dipole inversion by ADMM",
        ("bilgic2014l1", "milovic2018fansi"),
        _inv_tv_admm,
    ),
    ("inversion", "nltv"): AlgorithmText(
        "nonlinear total variation, FANSI (with an optional weak-harmonic term)",
        ("milovic2018fansi",),
        _inv_nltv,
    ),
    ("inversion", "rts"): AlgorithmText(
        "rapid two-step dipole inversion (RTS)", ("kames2018rts",), _inv_rts
    ),
    ("inversion", "ndi"): AlgorithmText(
        "nonlinear dipole inversion (NDI)", ("polak2020ndi",), _inv_ndi
    ),
    ("inversion", "ilsqr"): AlgorithmText(
        "iLSQR with streaking-artifact removal", ("li2015ilsqr",), _inv_ilsqr
    ),
    ("inversion", "medi"): AlgorithmText(
        "morphology-enabled dipole inversion (MEDI)",
        ("liu2011medi", "liu2012medi", "liu2013nonlinear"),
        _inv_medi,
    ),
    ("inversion", "sstv"): AlgorithmText(
        "single-step total-variation QSM",
        ("chatnuntawech2017sstv", "wu2012vsharp"),
        _inv_sstv,
    ),
    ("inversion", "tfi"): AlgorithmText(
        "preconditioned total field inversion (TFI)",
        ("liu2017tfi", "liu2013nonlinear"),
        _inv_tfi,
    ),
    ("inversion", "tgv"): AlgorithmText(
        "total generalized variation QSM (TGV-QSM)", ("langkammer2015tgv",), _inv_tgv
    ),
    ("reference", "mean"): AlgorithmText(
        "whole-brain mean referencing", ("consensus2024",), _ref_mean
    ),
    ("reference", "mask"): AlgorithmText(
        "referencing to a user-supplied region", ("consensus2024",), _ref_mask
    ),
    ("reference", "csf"): AlgorithmText(
        "automatic ventricular CSF referencing",
        ("straub2017", "liu2018medi0", "consensus2024"),
        _ref_csf,
    ),
    ("r2star", "arlo"): AlgorithmText(
        "auto-regression on linear operations (ARLO)", ("pei2015arlo",), _r2s_arlo
    ),
    ("r2star", "loglinear"): AlgorithmText("weighted log-linear R2* fit", (), _r2s_loglinear),
}


def algorithm_name(stage: str, algorithm: str) -> str:
    """The published name of a registry algorithm (the identifier itself if unknown)."""
    entry = ALGORITHMS.get((stage, algorithm))
    return entry.name if entry else algorithm


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boilerplate:
    """The methods text of a run in three forms, and what it cites.

    Attributes
    ----------
    markdown : str
        Paragraphs and a numbered reference list (``CITATION.md``).
    html : str
        An HTML fragment (``<div class="boilerplate">``), text escaped, references as an
        ordered list with DOI links.
    bibtex : str
        One ``@article`` entry per cited reference (``CITATION.bib``).
    references : list of Reference
        The cited references in order of first citation.
    """

    markdown: str
    html: str
    bibtex: str
    references: list[Reference]


def default_versions() -> dict[str, str]:
    """Installed versions of the software the text names (missing ones are left out)."""
    out: dict[str, str] = {}
    for display, dist in SOFTWARE.items():
        try:
            out[display] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _resolved(stage: str, algorithm: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with the algorithm's defaults filled in (as given if they do not validate)."""
    from qsm_bids import registry

    try:
        return registry.resolve(stage, algorithm, dict(given))
    except (KeyError, ValueError, ImportError, AttributeError):
        return dict(given)


def _stage(provenance: Mapping[str, Any], stage: str) -> tuple[str, dict[str, Any]] | None:
    spec = provenance.get(stage)
    if not isinstance(spec, Mapping) or "Algorithm" not in spec:
        return None
    algorithm = str(spec["Algorithm"])
    return algorithm, _resolved(stage, algorithm, spec.get("Parameters") or {})


def _describe(stage: str, algorithm: str, params: Mapping[str, Any]) -> str:
    entry = ALGORITHMS.get((stage, algorithm))
    if entry is None:
        from qsm_bids import registry

        what = registry.STAGES.get(stage, (stage, {}))[0]
        settings = ", ".join(f"{k} = {format_value(v)}" for k, v in params.items())
        return f"Step '{what}' used the algorithm '{algorithm}' ({settings or 'no parameters'})."
    try:
        return entry.describe(params)
    except KeyError as exc:  # a sidecar from another version lacking a parameter
        return f"The {entry.name} was used (parameter {exc} not recorded)."


def _software_sentence(pipeline: str | None, versions: Mapping[str, str]) -> str:
    def v(name: str) -> str:
        return f" {versions[name]}" if versions.get(name) else ""

    recipe = f' (recipe "{pipeline}")' if pipeline else ""
    return (
        f"Results included in this manuscript come from processing performed with "
        f"qsm_bids{v('qsm_bids')}{recipe}, a BIDS app for quantitative susceptibility mapping "
        f"built on Nipype{v('Nipype')} ({_cite('gorgolewski2011nipype')}); it reads and writes "
        "data organised according to the Brain Imaging Data Structure (BIDS; "
        f"{_cite('gorgolewski2016bids')}). Numerical work used NumPy{v('NumPy')} "
        f"({_cite('harris2020numpy')}) and images were read and written with "
        f"NiBabel{v('NiBabel')}."
    )


def _data_sentence(field_strength_t: float | None, echo_times_s: list[float] | None) -> str:
    what = "the magnitude and phase images of the multi-echo gradient-echo acquisition"
    if echo_times_s:
        tes = ", ".join(_f(1000 * float(t)) for t in echo_times_s)
        what = (
            f"the magnitude and phase images of {_plural(len(echo_times_s), 'echo')}"
            f" (echo times {tes} ms)"
        )
    at = f", acquired at {_f(field_strength_t)} T," if field_strength_t else ""
    return f"For each run, {what}{at} were processed as follows."


def _feedback(background: tuple[str, dict[str, Any]], inversion: tuple[str, dict] | None) -> str:
    _, p = background
    n = int(p.get("dipole_feedback", 0))
    if n <= 0:
        return ""
    text = (
        f"The local field was then refined by {_plural(n, 'susceptibility-feedback pass')}: "
        "the field of the current susceptibility map was subtracted from the total field, the "
        "background removal was repeated on the remainder and that field added back"
    )
    w = float(p.get("feedback_relaxation", 1.0))
    if w != 1.0:
        text += f", over-relaxed by a factor of {_f(w)}"
    k = int(p.get("feedback_max_iter", 0))
    if k > 0:
        text += f" (each pass limited to {k} iterations)"
    text += ", and the inversion was repeated"
    if inversion is not None:
        pre = int(inversion[1].get("preliminary_max_iter", 0))
        if pre > 0:
            text += f"; the inversions before the last were limited to {pre} iterations"
    return text + (
        ". Alternating in this way approximates a joint fit of the sources inside and outside "
        f"the brain, as total field inversion does ({_cite('liu2017tfi')}); the local field "
        "written out is consistent with the final map."
    )


def _registration_sentence(versions: Mapping[str, str]) -> str:
    ants = f" {versions['ANTsPy']}" if versions.get("ANTsPy") else ""
    return (
        "The echo-averaged magnitude image, skull-stripped with the brain mask, was registered "
        "to the ICBM 152 nonlinear symmetric template version 2009a "
        f"({TEMPLATE_SPACE}; {_cite('fonov2009', 'fonov2011')}) with the antsRegistration "
        f"tool of ANTs ({_cite('avants2008', 'tustison2021antsx')}), run through ANTsPy{ants}: "
        "rigid, affine and symmetric normalisation (SyN) stages driven by Mattes mutual "
        "information. The susceptibility map was resampled into template space with the "
        "forward transforms, and the AAL3 atlas "
        f"({_cite('rolls2020aal3')}) was brought into each run's space with the inverse "
        "transforms (nearest-neighbour interpolation of the labels) to compute regional "
        "susceptibility statistics."
    )


def _segmentation_sentence(name: str) -> str:
    return (
        f'Regional statistics were also computed in the user-supplied segmentation "{name}", '
        "placed on each run's grid by world coordinates (nearest-neighbour interpolation, "
        "no registration)."
    )


def _closing() -> str:
    return (
        "The processing follows the recommendations of the QSM consensus "
        f"({_cite('consensus2024')}): every algorithm and parameter is recorded in the JSON "
        "sidecar of each derivative, and susceptibility is reported in ppm relative to the "
        "reference stated above."
    )


#: The stages the text describes, in pipeline order.
STAGE_ORDER = ("mask", "unwrap", "combine", "background", "inversion", "reference", "r2star")


_NOTE = (
    "This text was generated by qsm_bids from the provenance of the run, with the intention "
    "that it be copied into manuscripts unchanged. It is released under the CC0 license."
)


def _paragraphs(
    provenance: Mapping[str, Any],
    *,
    registration: bool,
    segmentation: str | None,
    versions: Mapping[str, str],
    field_strength_t: float | None,
    echo_times_s: list[float] | None,
) -> list[str]:
    stages = {s: _stage(provenance, s) for s in STAGE_ORDER}
    pipeline = provenance.get("Pipeline")
    first = [_software_sentence(str(pipeline) if pipeline else None, versions)]
    first.append(_data_sentence(field_strength_t, echo_times_s))
    field = [_describe(s, *stages[s]) for s in ("mask", "unwrap", "combine") if stages[s]]
    chi: list[str] = []
    if stages["background"]:
        chi.append(_describe("background", *stages["background"]))
    if stages["inversion"]:
        alg, p = stages["inversion"]
        chi.append(_describe("inversion", alg, p))
        if p.get("data_weights"):
            chi.append(
                "The data term of the inversion was weighted by the inverse of the field's "
                "standard deviation from the echo fit."
            )
    if stages["background"]:
        chi.append(_feedback(stages["background"], stages["inversion"]))
    if stages["inversion"] and stages["inversion"][1].get("two_pass"):
        chi.append(
            "Because the mask excludes unreliable voxels around strong sources, background "
            "removal and inversion were run twice, once on that mask and once with its holes "
            "filled, and the second map was used only inside the holes (the two-pass scheme "
            f"of QSMxT; {_cite('stewart2022qsmxt')})."
        )
    if stages["reference"]:
        chi.append(_describe("reference", *stages["reference"]))
    paragraphs = [" ".join(first), " ".join(field), " ".join(s for s in chi if s)]
    if stages["r2star"]:
        paragraphs.append(_describe("r2star", *stages["r2star"]))
    spatial = []
    if registration:
        spatial.append(_registration_sentence(versions))
    if segmentation:
        spatial.append(_segmentation_sentence(segmentation))
    if spatial:
        paragraphs.append(" ".join(spatial))
    paragraphs.append(_closing())
    return [p for p in paragraphs if p]


def _cited(paragraphs: list[str]) -> list[str]:
    keys: list[str] = []
    for paragraph in paragraphs:
        for key in _MARK.findall(paragraph):
            if key not in keys:
                keys.append(key)
    return keys


def _markdown(paragraphs: list[str], refs: list[Reference], label: dict[str, str]) -> str:
    def resolve(text: str) -> str:
        return _MARK.sub(lambda m: label[m.group(1)], text).replace("*", r"\*")

    lines = ["# Methods", ""]
    for paragraph in paragraphs:
        lines += [resolve(paragraph), ""]
    lines += ["## References", ""]
    for i, ref in enumerate(refs, 1):
        doi = f" https://doi.org/{ref.doi}" if ref.doi else ""
        lines.append(f"{i}. {ref.citation().replace('*', chr(92) + '*')}{doi}")
    lines += ["", f"*{_NOTE}*", ""]
    return "\n".join(lines)


def _html(paragraphs: list[str], refs: list[Reference], label: dict[str, str]) -> str:
    number = {ref.key: i for i, ref in enumerate(refs, 1)}

    def resolve(text: str) -> str:
        escaped = html.escape(text, quote=True)
        return _MARK.sub(
            lambda m: (
                f'<a href="#qsm-ref-{number[m.group(1)]}">{html.escape(label[m.group(1)])}</a>'
            ),
            escaped,
        )

    parts = ['<div class="boilerplate">']
    parts += [f"<p>{resolve(p)}</p>" for p in paragraphs]
    parts.append("<h4>References</h4>")
    parts.append('<ol class="references">')
    for i, ref in enumerate(refs, 1):
        doi = ""
        if ref.doi:
            url = html.escape(f"https://doi.org/{ref.doi}", quote=True)
            doi = f' <a href="{url}">doi:{html.escape(ref.doi)}</a>'
        parts.append(f'<li id="qsm-ref-{i}">{html.escape(ref.citation())}{doi}</li>')
    parts.append("</ol>")
    parts.append(f'<p class="note"><em>{html.escape(_NOTE)}</em></p>')
    parts.append("</div>")
    return "\n".join(parts)


def build_boilerplate(
    provenance: dict,
    *,
    registration: bool,
    segmentation: str | None = None,
    versions: dict | None = None,
    field_strength_t: float | None = None,
    echo_times_s: list[float] | None = None,
) -> Boilerplate:
    """The methods text of a run, with its references.

    Parameters
    ----------
    provenance : dict
        :meth:`qsm_bids.recipe.Recipe.provenance`:
        ``{"Pipeline": name, "<stage>": {"Algorithm": str, "Parameters": {...}}, ...}``, or
        a derivative's JSON sidecar, whose ``Stages`` hold the same stage entries (its
        ``EchoTime`` and ``MagneticFieldStrength`` then serve as defaults of the two
        arguments below). Stages that are missing are left out of the text; parameters that
        are missing take the algorithm's defaults.
    registration : bool
        Whether the run registered to the template and computed the AAL3 statistics.
    segmentation : str or None, default None
        Name of a user segmentation whose regional statistics were computed.
    versions : dict or None, default None
        Display name -> version (keys as in :data:`SOFTWARE`: ``qsm_bids``, ``Nipype``,
        ``ANTsPy``, ``NumPy``, ``NiBabel``); None reads the installed ones.
    field_strength_t : float or None, default None
        Magnetic field strength in T, stated when given.
    echo_times_s : list of float or None, default None
        Echo times in s, stated (in ms) when given.

    Returns
    -------
    Boilerplate
        Markdown, HTML fragment, BibTeX and the cited references.
    """
    versions = default_versions() if versions is None else dict(versions)
    if isinstance(provenance.get("Stages"), Mapping):  # a derivative's sidecar
        if echo_times_s is None and isinstance(provenance.get("EchoTime"), list):
            echo_times_s = [float(t) for t in provenance["EchoTime"]]
        if field_strength_t is None and provenance.get("MagneticFieldStrength"):
            field_strength_t = float(provenance["MagneticFieldStrength"])
        provenance = {"Pipeline": provenance.get("Pipeline"), **provenance["Stages"]}
    paragraphs = _paragraphs(
        provenance,
        registration=registration,
        segmentation=segmentation,
        versions=versions,
        field_strength_t=field_strength_t,
        echo_times_s=echo_times_s,
    )
    keys = _cited(paragraphs)
    refs = [REFERENCES[k] for k in keys]
    label = labels(keys)
    return Boilerplate(
        markdown=_markdown(paragraphs, refs, label),
        html=_html(paragraphs, refs, label),
        bibtex="\n".join(ref.bibtex() for ref in refs),
        references=refs,
    )


def write_citation_files(log_dir: Path, boilerplate: Boilerplate) -> list[Path]:
    """Write ``CITATION.md``, ``CITATION.html`` and ``CITATION.bib`` into ``log_dir``.

    Each file is written atomically (:func:`qsm_bids.bids.derivatives.write_text_atomic`);
    the folder is created if needed.

    Parameters
    ----------
    log_dir : Path
        The run's log folder (``<output>/logs``).
    boilerplate : Boilerplate
        From :func:`build_boilerplate`.

    Returns
    -------
    list of Path
        The files written.
    """
    from qsm_bids.bids.derivatives import write_text_atomic

    log_dir = Path(log_dir)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>qsm_bids methods</title></head><body>\n"
        f"{boilerplate.html}\n</body></html>\n"
    )
    return [
        write_text_atomic(log_dir / "CITATION.md", boilerplate.markdown),
        write_text_atomic(log_dir / "CITATION.html", page),
        write_text_atomic(log_dir / "CITATION.bib", boilerplate.bibtex),
    ]
