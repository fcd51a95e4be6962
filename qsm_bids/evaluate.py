"""Compare a susceptibility map with a known truth (the simulator's truth derivative).

The truth derivative (written by :mod:`qsm_bids.simulate`) holds, per subject, the true
``Chimap`` (ppm, relative to water), a ``desc-brain_mask`` and a ``dseg`` label map with a
``dseg.tsv`` of label names at its root.

All measures are taken in the mask eroded by ``erode_voxels``. QSM is defined only up to a
constant, so the maps are referenced to each other there: the NRMSE-type measures,
correlation and HFEN remove each map's mean; XSIM and the calcification measures use the
estimate shifted so that its mean equals the truth's (the truth keeps its own reference);
the region table reports both maps with their mean over the mask removed.

The measures are those of the QSM reconstruction challenges (2016: Langkammer et al., MRM
2018;79:1661; 2.0: Bilgic et al., MRM 2021;86:1241 and Marques et al., MRM 2021;86:526)
and XSIM (Milovic et al., MRM 2024); see :mod:`qsm_bids.core.metrics`. The streaking
index (:mod:`qsm_bids.core.streaking`) needs no reference: it is reported for the
estimate and for the truth, in the same eroded mask, so that the two can be compared.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.core.metrics import (
    calcification_streaking,
    correlation,
    dgm_slope,
    evaluation_mask,
    hfen,
    nrmse,
    nrmse_detrended,
    region_error_table,
    xsim,
)
from qsm_bids.core.streaking import streaking_index
from qsm_bids.errors import QSMInputError
from qsm_bids.regions import DEEP_GREY

#: Name of the calcification region in a ``dseg.tsv`` (challenge 2.0 phantoms have one).
CALCIFICATION = "calcification"

#: The scalar measures of :func:`evaluate_maps`: key -> (label, format) for tables.
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "nrmse_percent": ("NRMSE (%)", ".2f"),
    "nrmse_detrended_percent": ("detrended NRMSE (%)", ".2f"),
    "hfen_percent": ("HFEN (%)", ".2f"),
    "xsim": ("XSIM", ".4f"),
    "correlation": ("correlation", ".4f"),
    "dgm_slope": ("DGM slope", ".4f"),
    "dgm_slope_error": ("DGM slope error |1-slope|", ".4f"),
    "coverage": ("coverage (finite, nonzero)", ".4f"),
    "streaking_index": ("streaking index (cone)", ".3f"),
    "truth_streaking_index": ("truth streaking index", ".3f"),
}


class EvaluationInputError(QSMInputError, ValueError):
    """Unusable evaluation input (missing or unreadable file, grids that differ).

    A :class:`~qsm_bids.errors.QSMInputError` (message ``"<path>: <problem>"``) that is
    also a ``ValueError``, as :func:`evaluate_against_truth` raised before.
    """


@dataclass
class Evaluation:
    """Accuracy of one susceptibility map against its truth.

    ``metrics`` is the JSON-ready dictionary of :func:`evaluate_maps` (empty when the
    evaluation was built by hand).
    """

    nrmse_percent: float
    voxels: int
    region_estimate_ppm: dict[str, float] = field(default_factory=dict)
    region_truth_ppm: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def region_errors(self) -> dict[str, float]:
        """Estimate minus truth of each region's mean (ppm)."""
        return {
            k: self.region_estimate_ppm[k] - self.region_truth_ppm[k]
            for k in self.region_estimate_ppm
            if k in self.region_truth_ppm
        }

    def table(self, regions: tuple[str, ...] = DEEP_GREY) -> str:
        """A plain-text table of the region means (ppm)."""
        lines = [f"{'region':<18}{'estimate':>10}{'truth':>10}{'error':>10}"]
        errors = self.region_errors()
        for r in regions:
            if r in errors:
                lines.append(
                    f"{r:<18}{self.region_estimate_ppm[r]:>10.4f}"
                    f"{self.region_truth_ppm[r]:>10.4f}{errors[r]:>+10.4f}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """All measures as a JSON-ready dictionary (see :func:`evaluate_maps`)."""
        if self.metrics:
            return dict(self.metrics)
        regions = {
            k: {
                "estimate_ppm": self.region_estimate_ppm[k],
                "truth_ppm": self.region_truth_ppm[k],
                "error_ppm": v,
            }
            for k, v in self.region_errors().items()
        }
        return _json_ready(
            {"nrmse_percent": self.nrmse_percent, "voxels": self.voxels, "regions": regions}
        )


def read_label_names(tsv: Path) -> dict[int, str]:
    """``index -> name`` from a BIDS ``dseg.tsv``."""
    with open(tsv, newline="") as fh:
        return {int(row["index"]): row["name"] for row in csv.DictReader(fh, delimiter="\t")}


def _json_ready(obj: Any) -> Any:
    """numpy scalars to Python, non-finite floats to None, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def _labels_named(names: Mapping[int, str], wanted: tuple[str, ...]) -> dict[int, str]:
    """The labels whose name (case-insensitive) is in ``wanted``, in ``wanted``'s order."""
    lower = {n.lower(): n for n in wanted}
    found = {k: lower[v.lower()] for k, v in names.items() if v.lower() in lower}
    order = {n: i for i, n in enumerate(wanted)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[1]]))


def _streaking(chi: np.ndarray, m: np.ndarray, voxel_size_mm, b0_dir) -> float:
    """:func:`~qsm_bids.core.streaking.streaking_index`, ``nan`` where undefined."""
    try:
        return streaking_index(chi, m, voxel_size_mm, b0_dir)
    except ValueError:  # a 1-voxel mask
        return math.nan


def evaluate_maps(
    chi: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray | None = None,
    names: Mapping[int, str] | None = None,
    *,
    erode_voxels: int = 3,
    dgm_regions: tuple[str, ...] = DEEP_GREY,
    calcification_region: str = CALCIFICATION,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
) -> dict[str, Any]:
    """All accuracy measures of ``chi`` against ``truth`` (both ppm), ready for JSON.

    Parameters
    ----------
    chi, truth : ndarray (X, Y, Z)
        Estimate and truth (ppm). Non-finite estimate voxels are scored as 0.
    mask : ndarray (X, Y, Z)
        Where the maps are compared (nonzero = inside), before erosion.
    labels : ndarray of int (X, Y, Z) or None, default None
        Segmentation for the region measures.
    names : mapping int -> str or None, default None
        Label -> region name; without it (or ``labels``) there are no region measures.
    erode_voxels : int, default 3
        Erosion of ``mask`` (6-connected steps) before anything is measured.
    dgm_regions : tuple of str, default :data:`DEEP_GREY`
        Region names (case-insensitive) entering the DGM slope (challenge 2.0).
    calcification_region : str, default ``"calcification"``
        Region name of a calcification, scored with
        :func:`~qsm_bids.core.metrics.calcification_streaking` when present.
    voxel_size_mm : tuple of float, default (1, 1, 1)
        Voxel edges (mm), for the calcification moments (ppm * mm^3) and the streaking
        index.
    b0_dir : 3 floats, default (0, 0, 1)
        B0 direction in voxel-index space (:func:`b0_direction_of`), for the streaking
        index.

    Returns
    -------
    dict
        ``voxels``, ``erode_voxels``, ``coverage`` (fraction of the mask with a finite,
        nonzero estimate), ``nonfinite_voxels``, ``nrmse_percent``,
        ``nrmse_detrended_percent``, ``hfen_percent``, ``xsim``, ``correlation``,
        ``dgm_slope``, ``dgm_slope_error``, ``dgm_regions`` (names used),
        ``calcification`` (``None`` or ``streaking``, ``moment_error_ppm_mm3``,
        ``truth_moment_ppm_mm3``, ``estimate_moment_ppm_mm3``, ``threshold_ppm``,
        ``voxels``), ``regions`` (``name -> {estimate_ppm, truth_ppm, error_ppm, voxels}``,
        both maps demeaned over the evaluation mask), ``streaking_index`` and
        ``truth_streaking_index`` (:func:`qsm_bids.core.streaking.streaking_index` of each
        map in the evaluation mask; no reference needed) and ``referencing`` (a sentence).
        Undefined values are ``None``.

    Raises
    ------
    ValueError
        Shapes differ, or the eroded mask is empty.
    """
    chi = np.asarray(chi)
    truth = np.asarray(truth)
    if chi.shape != truth.shape or np.shape(mask) != truth.shape:
        raise ValueError(
            f"shape mismatch: estimate {chi.shape}, truth {truth.shape}, mask {np.shape(mask)}"
        )
    if labels is not None and np.shape(labels) != truth.shape:
        raise ValueError(f"shape mismatch: labels {np.shape(labels)}, truth {truth.shape}")
    m = evaluation_mask(mask, erode_voxels)
    if not m.any():
        raise ValueError(f"the mask eroded by {erode_voxels} voxel(s) is empty")
    finite = np.isfinite(chi)
    nonfinite = int((~finite & m).sum())
    if not finite.all():
        chi = np.where(finite, chi, 0.0)
    coverage = float(((chi != 0) & m).sum() / m.sum())
    # reference: the estimate shifted to the truth's mean over the evaluation mask
    offset = float(np.mean(truth[m], dtype=np.float64) - np.mean(chi[m], dtype=np.float64))
    chi_ref = chi.astype(np.float64) + offset
    out: dict[str, Any] = {
        "voxels": int(m.sum()),
        "erode_voxels": int(erode_voxels),
        "coverage": coverage,
        "nonfinite_voxels": nonfinite,
        "nrmse_percent": nrmse(chi, truth, m),
        "nrmse_detrended_percent": nrmse_detrended(chi, truth, m),
        "hfen_percent": hfen(chi, truth, m),
        "xsim": xsim(chi_ref, truth, m),
        "correlation": correlation(chi, truth, m),
        "streaking_index": _streaking(chi, m, voxel_size_mm, b0_dir),
        "truth_streaking_index": _streaking(truth, m, voxel_size_mm, b0_dir),
        "dgm_slope": math.nan,
        "dgm_slope_error": math.nan,
        "dgm_regions": [],
        "calcification": None,
        "regions": {},
        "referencing": (
            f"maps compared in the mask eroded by {erode_voxels} voxel(s); NRMSE, detrended "
            "NRMSE, HFEN and correlation remove each map's mean there; XSIM and the "
            "calcification use the estimate shifted to the truth's mean; region means have "
            "both maps' mean removed"
        ),
    }
    if labels is not None and names:
        labels = np.asarray(labels)
        out["regions"] = region_error_table(chi, truth, labels, names, m, demean=True)
        dgm = _labels_named(names, tuple(dgm_regions))
        present = [k for k in dgm if ((labels == k) & m).any()]
        out["dgm_regions"] = [dgm[k] for k in present]
        slope = dgm_slope(chi, truth, labels, present, m)
        out["dgm_slope"] = slope
        out["dgm_slope_error"] = abs(1.0 - slope)
        calc_labels = list(_labels_named(names, (calcification_region,)))
        calc = np.isin(labels, calc_labels) & m if calc_labels else None
        if calc is not None and calc.any():
            scores = calcification_streaking(
                np.where(m, chi_ref, 0.0),
                np.where(m, truth, 0.0),
                calc,
                voxel_volume_mm3=float(np.prod(voxel_size_mm)),
            )
            out["calcification"] = {
                "streaking": scores.streaking,
                "moment_error_ppm_mm3": scores.moment_error,
                "truth_moment_ppm_mm3": scores.truth_moment,
                "estimate_moment_ppm_mm3": scores.estimate_moment,
                "threshold_ppm": scores.threshold_ppm,
                "voxels": scores.voxels,
            }
    return _json_ready(out)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A readable plain-text table of an :func:`evaluate_maps` dictionary."""

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [f"{'measure':<30}{'value':>12}"]
    for key, (label, spec) in METRIC_LABELS.items():
        if key in metrics:
            lines.append(f"{label:<30}{fmt(metrics[key], spec):>12}")
    calc = metrics.get("calcification")
    if calc:
        lines.append(f"{'calcification streaking':<30}{fmt(calc['streaking'], '.4f'):>12}")
        moment = fmt(calc["moment_error_ppm_mm3"], ".3f")
        lines.append(f"{'calcification moment error':<30}{moment:>12}  ppm mm^3")
    lines.append(f"{'voxels evaluated':<30}{metrics.get('voxels', 0):>12d}")
    regions = metrics.get("regions") or {}
    if regions:
        lines.append("")
        lines.append(
            f"{'region (ppm, demeaned)':<24}{'estimate':>10}{'truth':>10}{'error':>10}{'voxels':>9}"
        )
        for name, r in regions.items():
            lines.append(
                f"{name:<24}{r['estimate_ppm']:>10.4f}{r['truth_ppm']:>10.4f}"
                f"{r['error_ppm']:>+10.4f}{r['voxels']:>9d}"
            )
    return "\n".join(lines)


def evaluate_arrays(
    chi: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    *,
    erode_voxels: int = 3,
) -> Evaluation:
    """Evaluate ``chi`` against ``truth`` (both ppm) inside ``mask`` eroded by
    ``erode_voxels``; region means over each label inside that mask, both maps demeaned.
    Every measure of :func:`evaluate_maps` is in the result's ``metrics``."""
    metrics = evaluate_maps(chi, truth, mask, labels, names, erode_voxels=erode_voxels)
    regions = metrics["regions"]
    return Evaluation(
        float(metrics["nrmse_percent"]),
        int(metrics["voxels"]),
        {k: r["estimate_ppm"] for k, r in regions.items()},
        {k: r["truth_ppm"] for k, r in regions.items()},
        metrics,
    )


def read_volume(path: Path, what: str = "image") -> tuple[np.ndarray, np.ndarray, tuple]:
    """A 3D NIfTI volume as float32 with its affine and voxel size (mm).

    Raises :class:`EvaluationInputError` naming ``path`` when it is missing, unreadable
    or not 3D (trailing singleton dimensions are dropped).
    """
    import nibabel as nb

    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(path, f"{what} not found")
    try:
        img = nb.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # not NIfTI, truncated gzip, bad header
        raise EvaluationInputError(
            path, f"cannot read the {what} as NIfTI: {type(exc).__name__}: {exc}"
        ) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise EvaluationInputError(path, f"{what} must be a 3D volume, found shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, np.asarray(img.affine, dtype=np.float64), zooms


def b0_direction_of(path: Path, affine: np.ndarray) -> tuple[float, float, float]:
    """The B0 direction (voxel-index space) of a map: the ``B0Direction`` of its JSON
    sidecar (written by the participant level) when present, else the scanner z axis
    through the affine (:func:`qsm_bids.core.kernels.b0_direction`)."""
    import json

    from qsm_bids.bids.derivatives import sidecar_path
    from qsm_bids.core.kernels import b0_direction

    side = sidecar_path(Path(path))
    try:
        value = json.loads(side.read_text()).get("B0Direction")
        b = np.asarray(value, dtype=np.float64)
        if b.shape == (3,) and np.linalg.norm(b) > 0:
            return tuple(float(v) for v in b / np.linalg.norm(b))  # type: ignore[return-value]
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # no (usable) sidecar
    return tuple(float(v) for v in b0_direction(affine))  # type: ignore[return-value]


def check_same_shape(path: Path, shape: tuple, ref_path: Path, ref_shape: tuple) -> None:
    """Raise :class:`EvaluationInputError` naming ``path`` if its grid differs from the ref."""
    if tuple(shape) != tuple(ref_shape):
        raise EvaluationInputError(
            path, f"shape {tuple(shape)} differs from {tuple(ref_shape)} of {ref_path}"
        )


def evaluate_against_truth(
    chimap: Path, truth_dir: Path, subject: str, *, mask: Path | None = None, erode_voxels: int = 3
) -> Evaluation:
    """Evaluate a ``Chimap`` file against the truth derivative of ``subject``.

    The evaluation mask is the truth brain mask, intersected with ``mask`` (for example
    the run's ``desc-local_mask``, where the map is defined) when given. Raises
    :class:`EvaluationInputError` (a ``QSMInputError`` and ``ValueError``) naming the file
    when one is missing or its shape differs from the truth's.
    """
    truth_dir = Path(truth_dir)
    anat = truth_dir / f"sub-{subject}" / "anat"
    truth_path = anat / f"sub-{subject}_Chimap.nii.gz"
    truth, _, _ = read_volume(truth_path, "truth Chimap")
    brain_path = anat / f"sub-{subject}_desc-brain_mask.nii.gz"
    brain, _, _ = read_volume(brain_path, "truth brain mask")
    labels_path = anat / f"sub-{subject}_dseg.nii.gz"
    labels, _, _ = read_volume(labels_path, "truth segmentation")
    tsv = truth_dir / "dseg.tsv"
    if not tsv.is_file():
        raise EvaluationInputError(tsv, "label table not found")
    names = read_label_names(tsv)
    chi, chi_affine, zooms = read_volume(Path(chimap), "susceptibility map")
    check_same_shape(Path(chimap), chi.shape, truth_path, truth.shape)
    for p, a in ((brain_path, brain), (labels_path, labels)):
        check_same_shape(p, a.shape, truth_path, truth.shape)
    m = brain > 0
    if mask is not None:
        extra, _, _ = read_volume(Path(mask), "mask")
        check_same_shape(Path(mask), extra.shape, truth_path, truth.shape)
        m &= extra > 0
    lab = np.rint(labels).astype(np.int32)
    metrics = evaluate_maps(
        chi,
        truth,
        m,
        lab,
        names,
        erode_voxels=erode_voxels,
        voxel_size_mm=zooms,
        b0_dir=b0_direction_of(Path(chimap), chi_affine),
    )
    regions = metrics["regions"]
    return Evaluation(
        float(metrics["nrmse_percent"]),
        int(metrics["voxels"]),
        {k: r["estimate_ppm"] for k, r in regions.items()},
        {k: r["truth_ppm"] for k, r in regions.items()},
        metrics,
    )
