"""``qsm-bids evaluate``: score a susceptibility map against a known truth.

::

    qsm-bids evaluate CHIMAP TRUTH [--mask MASK] [--labels DSEG] [--labels-tsv TSV]
                      [--subject LABEL] [--output JSON] [--erode VOXELS]

``TRUTH`` is either a truth ``Chimap`` NIfTI or a truth derivatives folder laid out like
the simulator's (``<dir>/sub-<label>/anat/sub-<label>_Chimap.nii.gz``,
``_desc-brain_mask.nii.gz``, ``_dseg.nii.gz`` and ``<dir>/dseg.tsv``). The measures are
those of the QSM reconstruction challenges (see :mod:`qsm_bids.core.metrics`); a table is
printed and every value written to JSON. Exit codes: 0 success, 2 bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.errors import QSMInputError

#: Help text for the ``evaluate`` sub-command's parser.
DESCRIPTION = """\
Score a susceptibility map (ppm) against a known truth with the QSM reconstruction
challenge measures: NRMSE, detrended NRMSE, HFEN, XSIM, correlation, deep grey matter
slope error, calcification streaking and moment (when the labels have a 'calcification'),
the mean estimate, truth and error per labelled region, and the no-reference streaking
index along the dipole cone of both maps (~1 isotropic, above 1.25 streaky; B0 direction
from CHIMAP's JSON sidecar, else from its affine). TRUTH is a truth Chimap NIfTI
or a truth derivatives folder like the one 'qsm-bids simulate' writes
(<dir>/sub-<label>/anat/sub-<label>_Chimap.nii.gz, _desc-brain_mask.nii.gz, _dseg.nii.gz,
<dir>/dseg.tsv). Prints a table and writes JSON (default: next to CHIMAP as
<name>_evaluation.json)."""

_SUBJECT = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)(?=[_.]|$)")


def _label(value: str) -> str:
    return value.removeprefix("sub-")


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``qsm-bids evaluate`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Parser (or sub-parser) to extend; its description is left to the caller
        (:data:`DESCRIPTION` is suitable).
    """
    parser.add_argument("chimap", type=Path, metavar="CHIMAP", help="susceptibility map (ppm)")
    parser.add_argument(
        "truth",
        type=Path,
        metavar="TRUTH",
        help="truth Chimap NIfTI, or a truth derivatives folder (as written by "
        "'qsm-bids simulate' in derivatives/qsm_bids-truth)",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="MASK",
        help="evaluate only inside this mask (intersected with the truth folder's brain "
        "mask); default: the truth brain mask, or where CHIMAP is finite and nonzero when "
        "TRUTH is a file",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="DSEG",
        help="segmentation for region measures (default: the truth folder's dseg)",
    )
    parser.add_argument(
        "--labels-tsv",
        type=Path,
        metavar="TSV",
        help="BIDS dseg.tsv naming the labels (default: the truth folder's dseg.tsv, else "
        "DSEG's .tsv sidecar or a dseg.tsv beside it)",
    )
    parser.add_argument(
        "--subject",
        type=_label,
        metavar="LABEL",
        help="subject in the truth folder (with or without 'sub-'; default: from CHIMAP's "
        "file name)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="JSON",
        help="where to write the JSON (default: <CHIMAP without .nii.gz>_evaluation.json)",
    )
    parser.add_argument(
        "--erode",
        type=_non_negative_int,
        default=3,
        metavar="VOXELS",
        help="erode the mask by this many voxels before measuring (default: 3)",
    )


@dataclass
class EvaluationInputs:
    """The files of one evaluation, resolved from the command line."""

    chimap: Path
    truth_chimap: Path
    masks: list[Path] = field(default_factory=list)
    labels: Path | None = None
    labels_tsv: Path | None = None
    subject: str | None = None


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def default_output(chimap: Path) -> Path:
    """``<folder of CHIMAP>/<CHIMAP name without .nii[.gz]>_evaluation.json``."""
    return chimap.parent / f"{_stem(chimap)}_evaluation.json"


def _subject_of(chimap: Path, truth_dir: Path) -> str:
    for part in (chimap.name, *(p.name for p in chimap.parents)):
        match = _SUBJECT.search(part)
        if match:
            return match.group(1)
    subjects = sorted(p.name[4:] for p in truth_dir.glob("sub-*") if p.is_dir())
    if len(subjects) == 1:
        return subjects[0]
    raise QSMInputError(
        chimap,
        "cannot tell the subject: the file name has no sub-<label> and the truth folder "
        f"holds {len(subjects)} subjects; pass --subject",
    )


def resolve_inputs(args: argparse.Namespace) -> EvaluationInputs:
    """Find the truth, mask and label files of ``args`` (see :data:`DESCRIPTION`).

    Raises
    ------
    QSMInputError
        A named file or folder does not exist, or the subject cannot be told.
    """
    chimap = Path(args.chimap)
    truth = Path(args.truth)
    if not chimap.is_file():
        raise QSMInputError(chimap, "susceptibility map not found")
    if not truth.exists():
        raise QSMInputError(truth, "truth not found (a Chimap NIfTI or a truth folder)")
    inputs = EvaluationInputs(chimap=chimap, truth_chimap=truth)
    if truth.is_dir():
        subject = args.subject or _subject_of(chimap, truth)
        anat = truth / f"sub-{subject}" / "anat"
        inputs.subject = subject
        inputs.truth_chimap = anat / f"sub-{subject}_Chimap.nii.gz"
        if not inputs.truth_chimap.is_file():
            raise QSMInputError(
                inputs.truth_chimap,
                f"truth Chimap not found; is {truth} a truth folder with subject {subject}?",
            )
        brain = anat / f"sub-{subject}_desc-brain_mask.nii.gz"
        if not brain.is_file():
            raise QSMInputError(brain, "truth brain mask not found")
        inputs.masks.append(brain)
        dseg = anat / f"sub-{subject}_dseg.nii.gz"
        if args.labels is None and dseg.is_file():
            inputs.labels = dseg
        if args.labels_tsv is None and (truth / "dseg.tsv").is_file():
            inputs.labels_tsv = truth / "dseg.tsv"
    else:
        inputs.subject = args.subject
    if args.mask is not None:
        inputs.masks.append(Path(args.mask))
    if args.labels is not None:
        inputs.labels = Path(args.labels)
    if args.labels_tsv is not None:
        inputs.labels_tsv = Path(args.labels_tsv)
        if not inputs.labels_tsv.is_file():
            raise QSMInputError(inputs.labels_tsv, "label table not found")
    elif inputs.labels is not None and inputs.labels_tsv is None:
        for tsv in (
            inputs.labels.parent / f"{_stem(inputs.labels)}.tsv",
            inputs.labels.parent / "dseg.tsv",
        ):
            if tsv.is_file():
                inputs.labels_tsv = tsv
                break
    return inputs


def _label_names(inputs: EvaluationInputs, labels: np.ndarray) -> dict[int, str]:
    from qsm_bids.evaluate import read_label_names

    if inputs.labels_tsv is not None:
        try:
            return read_label_names(inputs.labels_tsv)
        except (OSError, KeyError, ValueError) as exc:
            raise QSMInputError(
                inputs.labels_tsv,
                f"cannot read the label table (a TSV with 'index' and 'name' columns): {exc}",
            ) from exc
    return {int(k): f"label-{int(k)}" for k in np.unique(labels) if k != 0}


def evaluate_inputs(inputs: EvaluationInputs, *, erode_voxels: int = 3) -> dict[str, Any]:
    """Load the files of ``inputs`` and return the JSON-ready evaluation.

    Returns
    -------
    dict
        ``inputs`` (the files used), ``warnings`` (list of str) and every key of
        :func:`qsm_bids.evaluate.evaluate_maps`.

    Raises
    ------
    QSMInputError
        A file is missing or unreadable, grids differ, or the mask is empty.
    """
    from qsm_bids.evaluate import b0_direction_of, check_same_shape, evaluate_maps, read_volume

    chi, chi_affine, zooms = read_volume(inputs.chimap, "susceptibility map")
    truth, truth_affine, _ = read_volume(inputs.truth_chimap, "truth Chimap")
    check_same_shape(inputs.chimap, chi.shape, inputs.truth_chimap, truth.shape)
    warnings: list[str] = []
    if not np.allclose(chi_affine, truth_affine, rtol=0.0, atol=1e-3):
        warnings.append(
            f"the affines of {inputs.chimap} and {inputs.truth_chimap} differ; the maps are "
            "compared voxel by voxel"
        )
    if inputs.masks:
        mask = np.ones(truth.shape, bool)
        for path in inputs.masks:
            data, _, _ = read_volume(path, "mask")
            check_same_shape(path, data.shape, inputs.truth_chimap, truth.shape)
            mask &= data > 0
    else:
        mask = np.isfinite(chi) & (chi != 0)
    labels = names = None
    if inputs.labels is not None:
        data, _, _ = read_volume(inputs.labels, "segmentation")
        check_same_shape(inputs.labels, data.shape, inputs.truth_chimap, truth.shape)
        labels = np.rint(data).astype(np.int32)
        names = _label_names(inputs, labels)
    try:
        metrics = evaluate_maps(
            chi,
            truth,
            mask,
            labels,
            names,
            erode_voxels=erode_voxels,
            voxel_size_mm=zooms,
            b0_dir=b0_direction_of(inputs.chimap, chi_affine),
        )
    except ValueError as exc:  # empty mask after erosion
        where = inputs.masks[-1] if inputs.masks else inputs.chimap
        raise QSMInputError(where, str(exc)) from exc
    return {
        "inputs": {
            "chimap": str(inputs.chimap),
            "truth": str(inputs.truth_chimap),
            "masks": [str(p) for p in inputs.masks],
            "labels": None if inputs.labels is None else str(inputs.labels),
            "labels_tsv": None if inputs.labels_tsv is None else str(inputs.labels_tsv),
            "subject": inputs.subject,
        },
        **metrics,
        "warnings": warnings,
    }


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``qsm-bids evaluate`` with parsed ``args`` (from :func:`add_evaluate_arguments`).

    Prints the table to stdout, writes the JSON and returns the exit code: 0 on success,
    2 on bad input (the message, naming the file and the problem, goes to stderr).
    """
    from qsm_bids.bids.derivatives import write_json_atomic
    from qsm_bids.evaluate import format_metrics

    try:
        inputs = resolve_inputs(args)
        result = evaluate_inputs(inputs, erode_voxels=args.erode)
        output = Path(args.output) if args.output is not None else default_output(inputs.chimap)
        try:
            write_json_atomic(output, result)
        except OSError as exc:
            raise QSMInputError(output, f"cannot write the evaluation: {exc}") from exc
    except QSMInputError as exc:
        print(f"qsm-bids evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(f"Susceptibility map: {inputs.chimap}")
    print(f"Truth:              {inputs.truth_chimap}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(format_metrics(result))
    print(f"Wrote {output}")
    return 0
