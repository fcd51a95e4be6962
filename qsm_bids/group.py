"""The group level: join every run's regional statistics, summarise them, and (optionally)
average the normalised susceptibility maps into a study-specific template.

Inputs, per run, in the participant level's output folder::

    sub-X/[ses-Y/]anat/<prefix>_desc-<segmentation>_regionstats.tsv   (aal3, user ones)
    sub-X/[ses-Y/]anat/<prefix>_space-MNI152NLin2009aSym_Chimap.nii.gz   (template only)

Outputs in ``<output_dir>/group/``:

* ``regionstats.tsv``: ``participant_id, session, run, acquisition, segmentation, region,
  label`` and the statistics columns, one row per participant, session, run, segmentation
  (the table's ``desc-`` label: ``aal3`` for the atlas, the name of a ``--segmentation``)
  and region (``n/a`` for an absent entity); AAL3 rows first;
* ``regionstats_summary.tsv``: ``segmentation, region, label, n, mean_ppm, std_ppm`` (mean
  and sample standard deviation, ``ddof=1``, of the runs' ``mean_ppm``), per segmentation:
  regions of different segmentations are never pooled, even when they share a name;
* ``regionstats.png`` (AAL3) and ``desc-<segmentation>_regionstats.png`` (any other): the
  distribution of each region's mean across runs, deep grey matter first;
* ``space-MNI152NLin2009aSym_desc-groupmean_Chimap.nii.gz`` and ``..._desc-groupmedian_...``
  (voxelwise mean and median of the runs' normalised maps) with JSON sidecars, on request;
* ``group_report.json``: which participants and runs were used and which have no table.

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsm_bids import __version__
from qsm_bids.bids.naming import name_entities, run_prefix, split_bids_name
from qsm_bids.core.regionstats import COLUMNS
from qsm_bids.errors import QSMInputError
from qsm_bids.regions import is_deep_grey, order_regions
from qsm_bids.registration.template import TEMPLATE_SPACE

#: Statistics columns of a run's ``regionstats.tsv``, in order.
STAT_COLUMNS: tuple[str, ...] = COLUMNS[COLUMNS.index("voxels") :]

#: Entities of the group table, with their column names.
_ENTITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ses", "session"),
    ("run", "run"),
    ("acq", "acquisition"),
)

_TABLE_GLOB = "*_desc-*_regionstats.tsv"
#: ``desc-`` label of the built-in atlas's tables (listed first).
ATLAS_SEGMENTATION = "aal3"
_MAP_GLOB = f"*_space-{TEMPLATE_SPACE}_Chimap.nii*"


@dataclass
class GroupResult:
    """What :func:`run_group_level` produced.

    Attributes
    ----------
    table : Path
        ``group/regionstats.tsv``.
    summary : Path
        ``group/regionstats_summary.tsv``.
    figure : Path
        The first figure: ``group/regionstats.png`` (AAL3) when AAL3 tables exist.
    figures : dict of str to Path
        Segmentation -> its figure (``regionstats.png`` for AAL3,
        ``desc-<segmentation>_regionstats.png`` for the others).
    segmentations : list of str
        The segmentations joined (``aal3`` first, then in name order).
    report : Path
        ``group/group_report.json``.
    participants : list of str
        Participants (``sub-<label>``) with at least one table.
    missing_participants : list of str
        Expected participants (requested, in the raw dataset or with an output folder)
        without any table: failed or not run.
    runs : list of str
        Runs (prefixes, e.g. ``sub-01_ses-1_run-1``) whose tables were joined.
    runs_without_table : list of str
        Runs with a susceptibility map but no regional statistics table.
    n_rows : int
        Rows of the group table (runs x regions).
    template_mean, template_median : Path or None
        The study template (mean and median map), when requested.
    template_maps : list of Path
        The normalised maps averaged into it.
    """

    table: Path
    summary: Path
    figure: Path
    report: Path
    figures: dict[str, Path] = field(default_factory=dict)
    segmentations: list[str] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    missing_participants: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    runs_without_table: list[str] = field(default_factory=list)
    n_rows: int = 0
    template_mean: Path | None = None
    template_median: Path | None = None
    template_maps: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "n/a") else math.nan
    except ValueError:
        return math.nan


def _tsv_text(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["n/a" if _is_missing(v) else _cell(v) for v in row])
    return buf.getvalue()


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _participants_of(bids_dir: Path) -> list[str]:
    """Participant labels of a raw dataset: ``participants.tsv`` and ``sub-*`` folders."""
    labels: list[str] = []
    tsv = Path(bids_dir) / "participants.tsv"
    if tsv.is_file():
        try:
            with open(tsv, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    pid = (row.get("participant_id") or "").strip()
                    if pid:
                        labels.append(pid.removeprefix("sub-"))
        except (OSError, csv.Error):
            pass
    labels += [p.name.removeprefix("sub-") for p in Path(bids_dir).glob("sub-*") if p.is_dir()]
    return list(dict.fromkeys(labels))


def _entities(name: str) -> dict[str, str] | None:
    return name_entities(name)


def _prefix(path: Path) -> str:
    parsed = split_bids_name(path.name)
    return path.name if parsed is None else run_prefix(parsed[0])


# --------------------------------------------------------------------------------------
# Study template
# --------------------------------------------------------------------------------------


def _stack_on_grid(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, object]:
    """Every map on the first map's grid (linear interpolation where grids differ; NaN
    outside a map's field of view). Returns (stack (N, X, Y, Z) float32, affine, header)."""
    import nibabel as nb
    from scipy.ndimage import affine_transform

    ref = nb.load(str(paths[0]))
    shape = ref.shape[:3]
    stack = np.empty((len(paths), *shape), dtype=np.float32)
    for n, path in enumerate(paths):
        img = ref if n == 0 else nb.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
        while data.ndim > 3:
            data = data[..., 0]
        if data.shape == shape and np.allclose(img.affine, ref.affine, atol=1e-4):
            stack[n] = data
            continue
        vox = np.linalg.solve(img.affine, ref.affine)  # reference voxel -> this map's voxel
        stack[n] = affine_transform(
            np.nan_to_num(data),
            vox[:3, :3],
            offset=vox[:3, 3],
            output_shape=shape,
            order=1,
            mode="constant",
            cval=np.nan,
        )
    return stack, ref.affine, ref.header


def _write_template(paths: list[Path], group_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    from qsm_bids.bids.derivatives import write_nifti_atomic

    stack, affine, header = _stack_on_grid(paths)
    with warnings.catch_warnings():  # "All-NaN slice" where no map covers a voxel
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        median = np.nanmedian(stack, axis=0)
    count = np.isfinite(stack).sum(axis=0)
    mean = np.where(count > 0, mean, 0.0).astype(np.float32)
    median = np.where(count > 0, median, 0.0).astype(np.float32)
    sources = [p.resolve().relative_to(output_dir.resolve()).as_posix() for p in paths]
    written = []
    for desc, data, how in (("groupmean", mean, "mean"), ("groupmedian", median, "median")):
        path = group_dir / f"space-{TEMPLATE_SPACE}_desc-{desc}_Chimap.nii.gz"
        sidecar = {
            "Units": "ppm",
            "SkullStripped": True,
            "Description": (
                f"Study-specific susceptibility template: voxelwise {how} of {len(paths)} "
                f"normalised susceptibility maps ({TEMPLATE_SPACE}); maps on another grid "
                "were resampled to the first one's by linear interpolation."
            ),
            "NumberOfMaps": len(paths),
            "Sources": [f"bids::{s}" for s in sources],
            "SoftwareVersion": f"qsm_bids {__version__}",
        }
        written.append(write_nifti_atomic(path, data, affine, header=header, sidecar=sidecar))
    return written[0], written[1]


# --------------------------------------------------------------------------------------
# The group level
# --------------------------------------------------------------------------------------


def run_group_level(
    output_dir: Path,
    *,
    participant_labels: list[str] | None = None,
    bids_dir: Path | None = None,
    group_template: bool = False,
) -> GroupResult:
    """Join and summarise every run's regional statistics; optionally build a study template.

    Parameters
    ----------
    output_dir : Path
        Root of the qsm_bids derivatives (the participant level's ``OUTPUT_DIR``); results
        go to ``<output_dir>/group/``.
    participant_labels : list of str or None, default None
        Participants to include (with or without ``sub-``); ``None``: every participant.
    bids_dir : Path or None, default None
        The raw dataset, to list the participants (``participants.tsv`` and ``sub-*``
        folders) that have no table. Without it only participants with an output folder
        (or requested ones) are checked.
    group_template : bool, default False
        Also write the voxelwise mean and median of every run's
        ``space-MNI152NLin2009aSym_Chimap`` (ppm) as
        ``group/space-MNI152NLin2009aSym_desc-group{mean,median}_Chimap.nii.gz``. Memory:
        all maps are held at once (about 35 MB per 1 mm map).

    Returns
    -------
    GroupResult
        Paths written, participants and runs used and missing.

    Raises
    ------
    QSMInputError
        If no ``*_desc-<segmentation>_regionstats.tsv`` exists for the selected
        participants, a table lacks the ``region`` or ``mean_ppm`` column, or
        ``group_template`` is set and no normalised map exists. Nothing is written then.
    """
    output_dir = Path(output_dir)
    wanted = (
        None
        if participant_labels is None
        else list(dict.fromkeys(p.removeprefix("sub-") for p in participant_labels))
    )
    out_subjects = sorted(
        p.name.removeprefix("sub-") for p in output_dir.glob("sub-*") if p.is_dir()
    )
    if wanted is not None:
        expected = list(wanted)
    else:
        expected = list(out_subjects)
        if bids_dir is not None:
            expected += _participants_of(Path(bids_dir))
        expected = sorted(dict.fromkeys(expected))

    def selected(label: str) -> bool:
        return wanted is None or label in wanted

    tables: list[Path] = []
    maps: list[Path] = []
    chimaps: list[Path] = []
    for label in out_subjects:
        if not selected(label):
            continue
        root = output_dir / f"sub-{label}"
        tables += sorted(root.glob(f"**/anat/{_TABLE_GLOB}"))
        maps += sorted(root.glob(f"**/anat/{_MAP_GLOB}"))
        chimaps += sorted(root.glob("**/anat/*_Chimap.nii*"))
    if not tables:
        where = f"participants {', '.join(wanted)}" if wanted is not None else "any participant"
        raise QSMInputError(
            output_dir,
            f"no regional statistics tables ({_TABLE_GLOB}) for {where}; run the participant "
            "level (with atlas statistics) first",
        )
    if group_template and not maps:
        raise QSMInputError(
            output_dir,
            f"--group-template needs normalised maps ({_MAP_GLOB}) and none were found",
        )

    # ---- read and join the tables, AAL3 first, then each segmentation in name order
    extra_keys: list[str] = []
    per_run: list[tuple[dict[str, str], str, str, list[dict[str, str]]]] = []
    for path in tables:
        ents = _entities(path.name) or {}
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = [dict(r) for r in reader]
            columns = reader.fieldnames or []
        for col in ("region", "mean_ppm"):
            if col not in columns:
                raise QSMInputError(path, f"regional statistics table has no {col!r} column")
        run_ents = {
            k: v for k, v in ents.items() if k not in ("space", "desc", "res", "den", "label")
        }
        for key in run_ents:
            if key not in ("sub", "ses", "run", "acq") and key not in extra_keys:
                extra_keys.append(key)
        per_run.append((run_ents, _prefix(path), ents.get("desc", ""), rows))
    segmentations = sorted(
        {seg for _, _, seg, _ in per_run}, key=lambda n: (n != ATLAS_SEGMENTATION, n)
    )
    per_run.sort(key=lambda item: segmentations.index(item[2]))  # stable: run order kept

    header = ["participant_id"] + [c for _, c in _ENTITY_COLUMNS] + extra_keys
    header += ["segmentation", "region", "label", *STAT_COLUMNS]
    out_rows: list[list[object]] = []
    # per segmentation: region -> the runs' means, region -> label, regions in table order
    by_region: dict[str, dict[str, list[float]]] = {seg: {} for seg in segmentations}
    region_label: dict[str, dict[str, str]] = {seg: {} for seg in segmentations}
    region_order: dict[str, list[str]] = {seg: [] for seg in segmentations}
    for ents, _prefix_name, seg, rows in per_run:
        ent_cells = [ents.get(k) for k, _ in _ENTITY_COLUMNS] + [ents.get(k) for k in extra_keys]
        for row in rows:
            region = (row.get("region") or "").strip()
            if not region:
                continue
            label = (row.get("label") or "").strip() or None
            stats = [row.get(c) if row.get(c) not in ("", None) else None for c in STAT_COLUMNS]
            out_rows.append([f"sub-{ents.get('sub', '')}", *ent_cells, seg, region, label, *stats])
            by_region[seg].setdefault(region, []).append(_to_float(row.get("mean_ppm")))
            if region not in region_label[seg] and label is not None:
                region_label[seg][region] = label
            region_order[seg].append(region)
    ordered = {seg: order_regions(region_order[seg]) for seg in segmentations}

    # ---- per-region summary across runs, per segmentation
    summary_rows: list[list[object]] = []
    for seg in segmentations:
        for region in ordered[seg]:
            vals = np.asarray([v for v in by_region[seg][region] if math.isfinite(v)], float)
            n = int(vals.size)
            mean = float(np.mean(vals)) if n else math.nan
            std = float(np.std(vals, ddof=1)) if n > 1 else math.nan
            summary_rows.append([seg, region, region_label[seg].get(region), n, mean, std])

    # ---- who is missing
    with_table = sorted({ents.get("sub", "") for ents, _, _, _ in per_run})
    missing = [p for p in expected if p not in with_table]
    prefixes = list(dict.fromkeys(p for _, p, _, _ in per_run))
    chimap_prefixes = sorted({_prefix(p) for p in chimaps if "_space-" not in p.name})
    runs_without_table = [p for p in chimap_prefixes if p not in prefixes]

    # ---- write
    from qsm_bids.bids.derivatives import write_text_atomic
    from qsm_bids.report.figures import plot_region_distribution

    group_dir = output_dir / "group"
    table_path = write_text_atomic(group_dir / "regionstats.tsv", _tsv_text(header, out_rows))
    summary_path = write_text_atomic(
        group_dir / "regionstats_summary.tsv",
        _tsv_text(["segmentation", "region", "label", "n", "mean_ppm", "std_ppm"], summary_rows),
    )
    figures: dict[str, Path] = {}
    for seg in segmentations:
        name = "regionstats.png" if seg == ATLAS_SEGMENTATION else f"desc-{seg}_regionstats.png"
        n_runs = sum(item[2] == seg for item in per_run)
        n_subs = len({ents.get("sub") for ents, _, s_, _ in per_run if s_ == seg})
        figures[seg] = plot_region_distribution(
            {r: by_region[seg][r] for r in ordered[seg]},
            group_dir / name,
            highlight=[r for r in ordered[seg] if is_deep_grey(r)],
            title=(
                f"Regional mean susceptibility ({seg}): {n_runs} run(s) of {n_subs} participant(s)"
            ),
        )
    result = GroupResult(
        table=table_path,
        summary=summary_path,
        figure=figures[segmentations[0]],
        figures=figures,
        segmentations=segmentations,
        report=group_dir / "group_report.json",
        participants=[f"sub-{p}" for p in with_table],
        missing_participants=[f"sub-{p}" for p in missing],
        runs=prefixes,
        runs_without_table=runs_without_table,
        n_rows=len(out_rows),
    )
    if group_template:
        result.template_mean, result.template_median = _write_template(maps, group_dir, output_dir)
        result.template_maps = maps

    def rel(path: Path | None) -> str | None:
        return None if path is None else path.relative_to(output_dir).as_posix()

    from qsm_bids.bids.derivatives import write_json_atomic

    write_json_atomic(
        result.report,
        {
            "GeneratedBy": {"Name": "qsm_bids", "Version": __version__},
            "ParticipantsExpected": [f"sub-{p}" for p in expected],
            "ParticipantsWithTables": result.participants,
            "ParticipantsMissing": result.missing_participants,
            "Runs": result.runs,
            "RunsWithoutTable": result.runs_without_table,
            "Segmentations": result.segmentations,
            "Regions": {seg: len(ordered[seg]) for seg in segmentations},
            "Rows": result.n_rows,
            "Outputs": {
                "table": rel(result.table),
                "summary": rel(result.summary),
                "figure": rel(result.figure),
                "figures": {seg: rel(p) for seg, p in result.figures.items()},
                "template_mean": rel(result.template_mean),
                "template_median": rel(result.template_median),
            },
            "TemplateMaps": [rel(p) for p in result.template_maps],
        },
    )
    return result


__all__ = [
    "ATLAS_SEGMENTATION",
    "GroupResult",
    "STAT_COLUMNS",
    "is_deep_grey",
    "order_regions",
    "run_group_level",
]
