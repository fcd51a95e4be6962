"""Compare a susceptibility map with a known truth (the simulator's truth derivative).

The truth derivative (written by :mod:`qsm_bids.simulate`) holds, per subject, the true
``Chimap`` (ppm, relative to water), a ``desc-brain_mask`` and a ``dseg`` label map with a
``dseg.tsv`` of label names at its root.

Both maps are referenced the same way before comparing: the truth is shifted so that its
mean over the evaluation mask equals that of the estimate (QSM is defined only up to a
constant), and the NRMSE is taken in the brain eroded by ``erode_voxels``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids.core.metrics import evaluation_mask, nrmse, region_means

#: Deep grey-matter regions reported by the demo and bounded by the tests.
DEEP_GREY = ("caudate", "putamen", "pallidum", "thalamus", "substantia_nigra", "red_nucleus")


@dataclass
class Evaluation:
    """Accuracy of one susceptibility map against its truth."""

    nrmse_percent: float
    voxels: int
    region_estimate_ppm: dict[str, float] = field(default_factory=dict)
    region_truth_ppm: dict[str, float] = field(default_factory=dict)

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


def read_label_names(tsv: Path) -> dict[int, str]:
    """``index -> name`` from a BIDS ``dseg.tsv``."""
    with open(tsv, newline="") as fh:
        return {int(row["index"]): row["name"] for row in csv.DictReader(fh, delimiter="\t")}


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
    ``erode_voxels``; region means over each label inside that mask, both maps demeaned."""
    m = evaluation_mask(mask, erode_voxels)
    shift_est = float(chi[m].mean())
    shift_true = float(truth[m].mean())
    est = region_means(chi - shift_est, labels, m, names)
    tru = region_means(truth - shift_true, labels, m, names)
    return Evaluation(nrmse(chi, truth, m), int(m.sum()), est, tru)


def evaluate_against_truth(
    chimap: Path, truth_dir: Path, subject: str, *, mask: Path | None = None, erode_voxels: int = 3
) -> Evaluation:
    """Evaluate a ``Chimap`` file against the truth derivative of ``subject``.

    The evaluation mask is the truth brain mask, intersected with ``mask`` (for example
    the run's ``desc-local_mask``, where the map is defined) when given.
    """
    anat = truth_dir / f"sub-{subject}" / "anat"
    truth = np.asarray(nb.load(anat / f"sub-{subject}_Chimap.nii.gz").dataobj, dtype=np.float32)
    brain = np.asarray(nb.load(anat / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    labels = np.asarray(nb.load(anat / f"sub-{subject}_dseg.nii.gz").dataobj).astype(np.int32)
    names = read_label_names(truth_dir / "dseg.tsv")
    chi = np.asarray(nb.load(chimap).dataobj, dtype=np.float32)
    if chi.shape != truth.shape:
        raise ValueError(f"{chimap}: shape {chi.shape} differs from the truth's {truth.shape}")
    if mask is not None:
        brain &= np.asarray(nb.load(mask).dataobj) > 0
    return evaluate_arrays(chi, truth, brain, labels, names, erode_voxels=erode_voxels)
