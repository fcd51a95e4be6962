"""What the report says about a run, read from its sidecars and tables (no HTML here).

Provenance (each stage's algorithm and parameters), warnings and notes, the regional
tables, the registration's quality (the transform's sidecar), summary numbers of the maps
(mask volume, percentiles, streaking index) and the ``GeneratedBy`` of the derivatives.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.core.streaking import STREAKING_FLAG
from qsm_bids.regions import WHOLE_BRAIN, is_deep_grey, order_regions
from qsm_bids.report.discovery import ATLAS_DESC, RunFiles, read_json

#: Friendly names of the pipeline stages, in processing order.
STAGE_NAMES: dict[str, str] = {
    "mask": "brain masking",
    "unwrap": "phase unwrapping",
    "combine": "echo combination",
    "background": "background field removal",
    "inversion": "dipole inversion",
    "reference": "susceptibility referencing",
    "r2star": "R2*/T2* mapping",
    "registration": "registration to the template",
    "atlas": "atlas labelling",
}

#: A user segmentation's table is shown whole up to this many rows (else folded like AAL3's).
MAX_REGION_ROWS = 60

#: (column, heading, decimals) of the region table.
STAT_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("voxels", "voxels", 0),
    ("volume_mm3", "volume (mm³)", 1),
    ("mean_ppm", "mean (ppm)", 4),
    ("median_ppm", "median (ppm)", 4),
    ("std_ppm", "SD (ppm)", 4),
    ("p25_ppm", "25th pct (ppm)", 4),
    ("p75_ppm", "75th pct (ppm)", 4),
)


# --------------------------------------------------------------------------------------
# Formatting of values
# --------------------------------------------------------------------------------------


def fmt_number(value: Any, digits: int = 4) -> str:
    """A number for display with ``digits`` decimals (``n/a`` for missing/non-finite)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        text = value.strip()
        try:
            return str(int(text))
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return text or "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        return "n/a"
    text = f"{number:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"


def fmt_param(value: Any) -> str:
    """A parameter value as written in a recipe (``true``, ``0.0001``, ``[6, 5, 4]``)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_param(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return format(float(value), ".6g")
    return str(value)


def streaking_text(value: float) -> str:
    """The Chimap's ``StreakingIndex`` with its one-sentence reading
    (:mod:`qsm_bids.core.streaking`)."""
    text = (
        f"{fmt_number(float(value), 2)}: k-space power on the dipole cone over the power off "
        f"it; ~1 isotropic, above {STREAKING_FLAG:g} suggests streaking along the dipole "
        "cone, below 1 a suppressed cone (strong regularisation)"
    )
    if value > STREAKING_FLAG:
        text += "; look for streaks through veins and strong sources"
    return text


# --------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------


def collect_stages(sidecars: list[tuple[Path, dict]]) -> dict[str, dict[str, Any]]:
    """Every stage's algorithm and parameters found in a run's sidecars.

    Parameters
    ----------
    sidecars : list of (Path, dict)
        From :meth:`RunFiles.sidecars` (the susceptibility map's first).

    Returns
    -------
    dict
        ``stage -> {"Algorithm": str, "Parameters": dict}`` in pipeline order (stages from
        :data:`STAGE_NAMES` first); keys ``algorithm``/``parameters`` in lower case are
        accepted too.
    """
    stages: dict[str, dict[str, Any]] = {}
    for _, side in sidecars:
        found = side.get("Stages") or side.get("QSMPipeline") or {}
        if not isinstance(found, Mapping):
            continue
        for name, spec in found.items():
            if name in stages or not isinstance(spec, Mapping):
                continue
            algo = spec.get("Algorithm", spec.get("algorithm", ""))
            params = spec.get("Parameters", spec.get("parameters", {}))
            stages[str(name)] = {
                "Algorithm": str(algo),
                "Parameters": dict(params) if isinstance(params, Mapping) else {},
            }
    known = [s for s in STAGE_NAMES if s in stages]
    return {s: stages[s] for s in known + [s for s in stages if s not in STAGE_NAMES]}


def collect_messages(sidecars: list[tuple[Path, dict]]) -> tuple[list[str], list[str]]:
    """A run's warnings and processing notes from its sidecars (deduplicated, in order).

    Any top-level field whose name contains ``Warning`` gives warnings; any containing
    ``Note`` gives notes (e.g. ``ProcessingNotes``). Values may be a string or a list of
    strings.

    Returns
    -------
    warnings, notes : list of str
    """
    warnings: list[str] = []
    notes: list[str] = []
    for _, side in sidecars:
        for key, value in side.items():
            low = key.lower()
            target = warnings if "warning" in low else notes if "note" in low else None
            if target is None:
                continue
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list):
                continue
            for item in items:
                text = item if isinstance(item, str) else json.dumps(item)
                if text not in target:
                    target.append(text)
    return warnings, notes


@dataclass
class RegistrationInfo:
    """What the transform's sidecar says about the registration.

    Attributes
    ----------
    source : str
        The sidecar's file name.
    quality : dict
        ``RegistrationQuality`` (e.g. ``{"Dice": 0.85, "Coverage": 0.97, "Passed": true}``);
        empty when the sidecar has none.
    passed : bool or None
        ``quality["Passed"]`` when present.
    regional_statistics : str
        ``RegionalStatistics`` (``"written"`` or ``"skipped: <reason>"``), ``""`` if absent.
    """

    source: str
    quality: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    regional_statistics: str = ""


def registration_info(run: RunFiles) -> RegistrationInfo | None:
    """The registration's quality and regional-statistics status from the run's transform
    sidecar (``*_xfm.json``; the first one that has either), else ``None``."""
    for path, side in run.xfm_sidecars():
        quality = side.get("RegistrationQuality")
        regional = side.get("RegionalStatistics")
        if not isinstance(quality, Mapping) and not isinstance(regional, str):
            continue
        quality = dict(quality) if isinstance(quality, Mapping) else {}
        passed = quality.get("Passed")
        return RegistrationInfo(
            source=path.name,
            quality=quality,
            passed=bool(passed) if isinstance(passed, bool) else None,
            regional_statistics=regional if isinstance(regional, str) else "",
        )
    return None


def generated_by(output_dir: Path) -> list[tuple[str, str]]:
    """(field, value) rows from the derivatives' ``dataset_description.json``."""
    desc = read_json(Path(output_dir) / "dataset_description.json")
    if desc is None:
        return []
    rows = []
    for gen in desc.get("GeneratedBy", []) or []:
        if not isinstance(gen, Mapping):
            continue
        rows.append(("Generated by", f"{gen.get('Name', '')} {gen.get('Version', '')}".strip()))
        if gen.get("CodeURL"):
            rows.append(("Code", str(gen["CodeURL"])))
        container = gen.get("Container")
        if isinstance(container, Mapping):
            rows.append(
                ("Container", " ".join(str(container.get(k, "")) for k in ("Type", "URI")).strip())
            )
    if desc.get("BIDSVersion"):
        rows.append(("BIDS version", str(desc["BIDSVersion"])))
    return rows


# --------------------------------------------------------------------------------------
# Region tables
# --------------------------------------------------------------------------------------


def regionstats_files(run: RunFiles) -> list[tuple[str, Path]]:
    """The run's region tables as ``(segmentation, path)``: ``aal3`` first, then by name."""
    found = [
        (desc, path)
        for (space, desc, suffix, ext), path in run.files.items()
        if suffix == "regionstats" and ext == ".tsv" and space is None and desc
    ]
    return sorted(found, key=lambda item: (item[0] != ATLAS_DESC, item[0]))


def read_regionstats(path: Path) -> list[dict[str, str]]:
    """Rows of a ``*_regionstats.tsv`` (``region``, ``label``, ``voxels``, ... columns)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(row) for row in csv.DictReader(fh, delimiter="\t")]


def split_region_rows(rows: list[dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """Region rows as (deep grey matter + whole brain, the others), deep grey first
    (:func:`qsm_bids.regions.order_regions`)."""
    order = order_regions([r.get("region", "") for r in rows])
    by_name = {r.get("region", ""): r for r in rows}
    deep = [n for n in order if is_deep_grey(n)]
    whole = [n for n in order if n.lower() == WHOLE_BRAIN]
    rest = [n for n in order if n not in deep and n not in whole]
    return [by_name[n] for n in deep + whole], [by_name[n] for n in rest]


@dataclass
class RegionRow:
    """One row of a region table as shown: name, label, formatted statistics, and its
    class (``"dgm"`` deep grey, ``"whole"`` the whole brain, ``""`` other)."""

    region: str
    label: str
    values: list[str]
    css: str


def region_rows(rows: list[dict[str, str]], *, deep: bool) -> list[RegionRow]:
    """Region rows formatted for the table (:data:`STAT_COLUMNS`); with ``deep``, deep
    grey-matter rows get the class ``dgm``."""
    out = []
    for row in rows:
        region = row.get("region", "")
        css = "whole" if region.lower() == WHOLE_BRAIN else ""
        if deep and not css and is_deep_grey(region):
            css = "dgm"
        values = [fmt_number(row.get(key), digits) for key, _, digits in STAT_COLUMNS]
        out.append(RegionRow(region, str(row.get("label", "")), values, css))
    return out


# --------------------------------------------------------------------------------------
# Numbers of the maps
# --------------------------------------------------------------------------------------


def _percentiles(data: np.ndarray, mask: np.ndarray | None, lo: float, hi: float) -> str:
    sel = (mask > 0) if mask is not None and mask.shape == data.shape else data != 0
    vals = data[sel & np.isfinite(data)]
    if vals.size == 0:
        return "n/a"
    a, b = np.percentile(vals, [lo, hi])
    return f"{fmt_number(float(a), 3)} .. {fmt_number(float(b), 3)}"


def acquisition_rows(sidecar: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The acquisition as the run used it, from the Chimap's sidecar: field strength (T)
    and where it came from, echo times (ms), B0 direction (voxel axes)."""
    rows: list[tuple[str, str]] = []
    b0 = sidecar.get("MagneticFieldStrength")
    if isinstance(b0, int | float) and not isinstance(b0, bool):
        text = f"{fmt_param(float(b0))} T"
        if sidecar.get("FieldStrengthSource"):
            text += f" (from {sidecar['FieldStrengthSource']})"
        rows.append(("field strength", text))
    te = sidecar.get("EchoTime")
    if isinstance(te, list) and te:
        try:
            rows.append(("echo times (ms)", ", ".join(fmt_param(1000 * float(t)) for t in te)))
        except (TypeError, ValueError):
            pass
    if sidecar.get("B0Direction"):
        rows.append(("B0 direction (voxel axes)", fmt_param(sidecar["B0Direction"])))
    return rows


def summary_numbers(
    run: RunFiles, sidecar: Mapping[str, Any], problems: list[str]
) -> list[tuple[str, str]]:
    """A run's summary numbers: brain-mask volume (mL), background-removal mask fraction,
    field and susceptibility percentiles, and the streaking index with its reading.

    Parameters
    ----------
    run : RunFiles
        The run's derivatives.
    sidecar : mapping
        The Chimap's sidecar (``StreakingIndex``).
    problems : list of str
        Unreadable files are appended here (the report shows them).

    Returns
    -------
    list of (str, str)
    """
    import nibabel as nb

    def load(path: Path | None, what: str):
        if path is None:
            return None
        try:
            img = nb.load(str(path))
            data = np.asanyarray(img.dataobj)
            return data.reshape(data.shape[:3]) if data.ndim > 3 else data, img
        except Exception as exc:  # a broken file must not stop the report
            problems.append(f"cannot read the {what} ({path.name}): {exc}")
            return None

    out: list[tuple[str, str]] = []
    mask_img = load(run.get("mask", desc="brain"), "brain mask")
    local_img = load(run.get("mask", desc="local"), "background-removal mask")
    mask = mask_img[0] > 0 if mask_img else None
    local = local_img[0] > 0 if local_img else None
    if local is not None and mask is not None and local.shape != mask.shape:
        local = None
    if mask is not None:
        voxel_ml = float(np.prod(mask_img[1].header.get_zooms()[:3])) / 1000.0
        out.append(("brain mask volume (mL)", fmt_number(float(mask.sum()) * voxel_ml, 1)))
        if local is not None and mask.sum():
            out.append(
                ("background-removal mask / brain mask", f"{100 * local.sum() / mask.sum():.1f} %")
            )
    for desc, title in (("total", "total field"), ("local", "local field")):
        img = load(run.get("fieldmap", desc=desc), f"{title} map")
        if img is None:
            continue
        use = mask if desc == "total" or local is None else local
        out.append(
            (f"{title}, 1st..99th percentile (Hz)", _percentiles(img[0].astype(float), use, 1, 99))
        )
    chi = load(run.get("Chimap"), "susceptibility map")
    if chi is not None:
        use = local if local is not None else mask
        out.append(
            (
                "susceptibility, 1st..99th percentile (ppm)",
                _percentiles(chi[0].astype(float), use, 1, 99),
            )
        )
        value = sidecar.get("StreakingIndex")
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(("streaking index (dipole cone)", streaking_text(float(value))))
    return out


__all__ = [
    "MAX_REGION_ROWS",
    "STAGE_NAMES",
    "STAT_COLUMNS",
    "RegionRow",
    "acquisition_rows",
    "RegistrationInfo",
    "collect_messages",
    "collect_stages",
    "fmt_number",
    "fmt_param",
    "generated_by",
    "read_regionstats",
    "region_rows",
    "regionstats_files",
    "registration_info",
    "split_region_rows",
    "streaking_text",
    "summary_numbers",
]
