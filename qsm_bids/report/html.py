"""The per-subject HTML report (``<output_dir>/sub-<label>.html``), in the spirit of fMRIPrep's.

The page is self-contained and readable offline: inline CSS, no JavaScript, no web fonts,
and figures as PNG files in ``<output_dir>/sub-<label>/figures/`` referenced by relative
path. It has one section per run (and session) with

* orthogonal slices of the first-echo magnitude (from the raw dataset, when given), the
  total and local field maps (Hz), the susceptibility map (ppm, grey, symmetric window)
  with the brain-mask contour, the atlas labels and R2* when present;
* the registration check (template outlines over the run's ``space-MNI152NLin2009aSym``
  susceptibility map) when that map exists;
* the regional statistics tables (deep grey matter first), one per
  ``*_desc-<segmentation>_regionstats.tsv``: AAL3 first, then user segmentations
  (``--segmentation``), each with its labels drawn over the susceptibility map;
* every stage's algorithm and parameters, read from the sidecars' ``Stages``;
* the run's processing notes and warnings, and the software version.

Runs of the raw dataset without derivatives (failed or not processed) are listed under
"Errors".
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from qsm_bids import __version__
from qsm_bids.bids.derivatives import write_text_atomic
from qsm_bids.core.streaking import STREAKING_FLAG
from qsm_bids.errors import QSMInputError

#: Extensions recognised when indexing a run's files (longest first).
_EXTENSIONS = (".nii.gz", ".nii", ".json", ".tsv")
#: Entities that name a derivative of a run rather than the run itself.
_DERIVATIVE_ENTITIES = ("space", "res", "den", "desc", "label")
#: Entities of raw files that vary within a run.
_RAW_VARYING = ("echo", "part")

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

#: Display window of the susceptibility maps (ppm, symmetric).
QSM_WINDOW_PPM = 0.15


# --------------------------------------------------------------------------------------
# Finding a subject's runs and their files
# --------------------------------------------------------------------------------------


def split_bids_name(name: str) -> tuple[list[tuple[str, str]], str, str] | None:
    """Split a BIDS file name into its entities, suffix and extension.

    Parameters
    ----------
    name : str
        E.g. ``"sub-01_ses-1_space-orig_dseg.nii.gz"``.

    Returns
    -------
    tuple or None
        ``([("sub", "01"), ("ses", "1"), ("space", "orig")], "dseg", ".nii.gz")``, or
        ``None`` when the name is not of that form.
    """
    ext = next((e for e in _EXTENSIONS if name.endswith(e)), None)
    if ext is None or name.startswith("."):
        return None
    parts = name[: -len(ext)].split("_")
    if len(parts) < 2:
        return None
    ents = []
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            return None
        ents.append((key, value))
    if ents[0][0] != "sub":
        return None
    return ents, parts[-1], ext


@dataclass
class RunFiles:
    """The derivatives of one run found in the output folder.

    Attributes
    ----------
    prefix : str
        The run's entities as in its file names, e.g. ``"sub-01_ses-1_run-1"``.
    entities : dict of str to str
        The same as ``{key: label}`` in file-name order.
    files : dict
        ``(space, desc, suffix, extension) -> Path``; ``space``/``desc`` are ``None`` when
        absent.
    """

    prefix: str
    entities: dict[str, str]
    files: dict[tuple[str | None, str | None, str, str], Path] = field(default_factory=dict)

    def get(
        self,
        suffix: str,
        *,
        desc: str | None = None,
        space: str | None = None,
        ext: str = ".nii.gz",
    ) -> Path | None:
        """The file with these ``space``/``desc``/``suffix``/``ext``, or ``None``."""
        path = self.files.get((space, desc, suffix, ext))
        if path is None and ext == ".nii.gz":
            path = self.files.get((space, desc, suffix, ".nii"))
        return path

    def sidecars(self) -> list[tuple[Path, dict]]:
        """Every readable JSON sidecar of the run, the susceptibility map's first."""
        order = sorted(
            (p for k, p in self.files.items() if k[3] == ".json"),
            key=lambda p: (not p.name.endswith(f"{self.prefix}_Chimap.json"), p.name),
        )
        out = []
        for path in order:
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                out.append((path, content))
        return out

    @property
    def label(self) -> str:
        """Human-readable run name, e.g. ``"session 1, acquisition x, run 1"``."""
        names = {"ses": "session", "acq": "acquisition", "run": "run", "task": "task"}
        bits = [f"{names.get(k, k)} {v}" for k, v in self.entities.items() if k != "sub"]
        return ", ".join(bits) if bits else "single run"


def find_subject_runs(output_dir: Path, subject: str) -> list[RunFiles]:
    """Index the derivatives of every run of one subject.

    Parameters
    ----------
    output_dir : Path
        Root of the qsm_bids derivatives.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    list of RunFiles
        Sorted by prefix; empty when the subject has no derivatives.
    """
    label = subject.removeprefix("sub-")
    root = Path(output_dir) / f"sub-{label}"
    runs: dict[str, RunFiles] = {}
    if not root.is_dir():
        return []
    for path in sorted(root.glob("**/anat/*")):
        if not path.is_file():
            continue
        parsed = split_bids_name(path.name)
        if parsed is None:
            continue
        ents, suffix, ext = parsed
        if dict(ents).get("sub") != label:
            continue
        run_ents = [(k, v) for k, v in ents if k not in _DERIVATIVE_ENTITIES]
        prefix = "_".join(f"{k}-{v}" for k, v in run_ents)
        key_ents = dict(ents)
        run = runs.setdefault(prefix, RunFiles(prefix=prefix, entities=dict(run_ents)))
        run.files[(key_ents.get("space"), key_ents.get("desc"), suffix, ext)] = path
    return [runs[k] for k in sorted(runs)]


def find_raw_runs(bids_dir: Path, subject: str) -> dict[str, list[Path]]:
    """Multi-echo GRE runs of one subject in the raw dataset, by prefix.

    Parameters
    ----------
    bids_dir : Path
        Raw BIDS dataset.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    dict of str to list of Path
        Run prefix (entities other than ``echo`` and ``part``) -> its magnitude images,
        sorted by echo number (empty list for phase-only runs).
    """
    label = subject.removeprefix("sub-")
    root = Path(bids_dir) / f"sub-{label}"
    runs: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return {}
    for path in sorted(root.glob("**/anat/*_part-*")):
        parsed = split_bids_name(path.name)
        if parsed is None or parsed[2] not in (".nii.gz", ".nii"):
            continue
        ents, suffix, _ = parsed
        if suffix not in ("MEGRE", "T2starw"):
            continue
        d = dict(ents)
        prefix = "_".join(f"{k}-{v}" for k, v in ents if k not in _RAW_VARYING)
        mags = runs.setdefault(prefix, [])
        if d.get("part") == "mag":
            try:
                echo = int(d.get("echo", "1"))
            except ValueError:
                echo = 1
            mags.append((echo, path))
    return {k: [p for _, p in sorted(v)] for k, v in sorted(runs.items())}


def _raw_root_from_description(output_dir: Path) -> Path | None:
    """The raw dataset recorded in ``dataset_description.json``'s ``DatasetLinks.raw``."""
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text("utf-8"))
        uri = desc["DatasetLinks"]["raw"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    parsed = urlparse(str(uri))
    if parsed.scheme not in ("file", ""):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def first_echo_magnitude(
    run: RunFiles, sidecar: Mapping[str, Any], bids_dir: Path | None
) -> Path | None:
    """The raw first-echo magnitude image of a run, or ``None`` when not found.

    Looked up in the sidecar's ``Sources`` (``bids:raw:...`` URIs, the first ``part-mag``
    image) under ``bids_dir``, then by name (``<prefix>_echo-1_part-mag_*``).
    """
    if bids_dir is None:
        return None
    bids_dir = Path(bids_dir)
    for uri in sidecar.get("Sources", []) or []:
        if isinstance(uri, str) and uri.startswith("bids:raw:") and "_part-mag" in uri:
            path = bids_dir / uri.removeprefix("bids:raw:")
            if path.is_file():
                return path
            break
    mags = find_raw_runs(bids_dir, run.entities.get("sub", "")).get(run.prefix, [])
    return mags[0] if mags else None


# --------------------------------------------------------------------------------------
# Sidecar content
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


#: A user segmentation's table is shown whole up to this many rows (else folded like AAL3's).
MAX_REGION_ROWS = 60


def regionstats_files(run: RunFiles) -> list[tuple[str, Path]]:
    """The run's region tables as ``(segmentation, path)``: ``aal3`` first, then by name."""
    found = [
        (desc, path)
        for (space, desc, suffix, ext), path in run.files.items()
        if suffix == "regionstats" and ext == ".tsv" and space is None and desc
    ]
    return sorted(found, key=lambda item: (item[0] != "aal3", item[0]))


def read_regionstats(path: Path) -> list[dict[str, str]]:
    """Rows of a ``*_regionstats.tsv`` (``region``, ``label``, ``voxels``, ... columns)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(row) for row in csv.DictReader(fh, delimiter="\t")]


# --------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fff;line-height:1.45}
nav{position:sticky;top:0;background:#2c3e50;padding:.5em 1em;z-index:1}
nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-size:.95em}
nav a:hover{text-decoration:underline}
main{max-width:1200px;margin:0 auto;padding:0 1.2em 3em}
h1{font-size:1.7em;margin:.8em 0 .3em}
h2{font-size:1.35em;border-bottom:2px solid #2c3e50;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.1em;margin:1.3em 0 .4em;color:#2c3e50}
figure{margin:.4em 0 1.2em}
figure img{max-width:100%;height:auto;border:1px solid #ccc;background:#000}
figcaption{font-size:.88em;color:#555;margin-top:.2em}
table{border-collapse:collapse;font-size:.88em;margin:.4em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.dgm td{background:#fff7ec}
tr.whole td{font-weight:bold}
.warning{background:#fff3cd;border-left:4px solid #e0a800;padding:.35em .7em;margin:.3em 0}
.error{background:#f8d7da;border-left:4px solid #c82333;padding:.35em .7em;margin:.3em 0}
.note{background:#eef5fb;border-left:4px solid #5b9bd5;padding:.35em .7em;margin:.3em 0}
.ok{color:#1e7e34}
code{background:#f3f3f3;padding:0 .25em;font-size:.92em}
details{margin:.3em 0 1em}
summary{cursor:pointer;color:#2c3e50}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
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


def _param(value: Any) -> str:
    """A parameter value as written in a recipe (``true``, ``0.0001``, ``[6, 5, 4]``)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_param(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return format(float(value), ".6g")
    return str(value)


def _figure(src: str, caption: str, alt: str) -> str:
    return (
        f'<figure><img src="{_e(src)}" alt="{_e(alt)}" loading="lazy">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _stages_table(stages: dict[str, dict[str, Any]]) -> str:
    if not stages:
        return '<p class="warning">No processing stages were recorded in the sidecars.</p>'
    rows = []
    for name, spec in stages.items():
        params = spec["Parameters"]
        friendly = STAGE_NAMES.get(name, name)
        cells = (
            "".join(
                f"<tr><td><code>{_e(k)}</code></td><td>{_e(_param(v))}</td></tr>"
                for k, v in params.items()
            )
            or "<tr><td colspan=2><em>no parameters</em></td></tr>"
        )
        rows.append(
            f"<tr><td>{_e(friendly)}<br><code>{_e(name)}</code></td>"
            f"<td><code>{_e(spec['Algorithm'])}</code></td>"
            f"<td><table>{cells}</table></td></tr>"
        )
    return (
        '<table class="provenance"><tr><th>stage</th><th>algorithm</th><th>parameters</th>'
        "</tr>" + "".join(rows) + "</table>"
    )


def _methods_text(stages: dict[str, dict[str, Any]], side: Mapping[str, Any]) -> str:
    bits = [
        f"{STAGE_NAMES.get(name, name)} with <code>{_e(spec['Algorithm'])}</code>"
        for name, spec in stages.items()
    ]
    version = side.get("SoftwareVersion", f"qsm_bids {__version__}")
    text = f"The susceptibility map was computed with {_e(version)}"
    if side.get("Pipeline"):
        text += f" (recipe <code>{_e(side['Pipeline'])}</code>)"
    if bits:
        text += ": " + "; ".join(bits)
    te = side.get("EchoTime")
    if isinstance(te, list) and te:
        text += ". Echo times: " + ", ".join(_param(1000 * float(t)) for t in te) + " ms"
    if side.get("MagneticFieldStrength"):
        text += f"; field strength {_e(_param(side['MagneticFieldStrength']))} T"
        if side.get("FieldStrengthSource"):
            text += f" (from <code>{_e(side['FieldStrengthSource'])}</code>)"
    if side.get("B0Direction"):
        text += "; B0 direction (voxel axes) " + _e(_param(side["B0Direction"]))
    return f"<p>{text}.</p>"


def _messages_html(warnings: list[str], notes: list[str]) -> str:
    out = [f'<div class="warning">&#9888; {_e(w)}</div>' for w in warnings]
    out += [f'<div class="note">{_e(n)}</div>' for n in notes]
    return "".join(out) or '<p class="ok">No warnings or notes.</p>'


def _region_rows(rows: list[dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """Split region rows into (deep grey + whole brain, other), deep grey first."""
    from qsm_bids.group import DEEP_GREY_PATTERNS, order_regions

    names = [r.get("region", "") for r in rows]
    order = order_regions(names)
    by_name = {r.get("region", ""): r for r in rows}
    deep = [n for n in order if any(p.search(n) for _, p in DEEP_GREY_PATTERNS)]
    whole = [n for n in order if n.lower() == "whole_brain"]
    rest = [n for n in order if n not in deep and n not in whole]
    return [by_name[n] for n in deep + whole], [by_name[n] for n in rest]


#: (column, heading, decimals) of the region table.
_STAT_COLUMNS = (
    ("voxels", "voxels", 0),
    ("volume_mm3", "volume (mm³)", 1),
    ("mean_ppm", "mean (ppm)", 4),
    ("median_ppm", "median (ppm)", 4),
    ("std_ppm", "SD (ppm)", 4),
    ("p25_ppm", "25th pct (ppm)", 4),
    ("p75_ppm", "75th pct (ppm)", 4),
)


def _region_table(rows: list[dict[str, str]], *, deep: bool) -> str:
    """HTML table of region rows; with ``deep``, deep grey-matter rows are highlighted."""
    from qsm_bids.group import is_deep_grey

    head = "<tr><th>region</th><th>label</th>" + "".join(
        f"<th>{_e(title)}</th>" for _, title, _ in _STAT_COLUMNS
    )
    body = []
    for row in rows:
        region = row.get("region", "")
        cls = "whole" if region.lower() == "whole_brain" else ""
        if deep and not cls and is_deep_grey(region):
            cls = "dgm"
        cells = "".join(
            f'<td class="num">{_e(_fmt(row.get(key), digits))}</td>'
            for key, _, digits in _STAT_COLUMNS
        )
        body.append(
            f'<tr class="{cls}"><td>{_e(region)}</td><td class="num">'
            f"{_e(row.get('label', ''))}</td>{cells}</tr>"
        )
    return "<table>" + head + "</tr>" + "".join(body) + "</table>"


# --------------------------------------------------------------------------------------
# Per-run content
# --------------------------------------------------------------------------------------


def _percentiles(data: np.ndarray, mask: np.ndarray | None, lo: float, hi: float) -> str:
    sel = (mask > 0) if mask is not None and mask.shape == data.shape else data != 0
    vals = data[sel & np.isfinite(data)]
    if vals.size == 0:
        return "n/a"
    a, b = np.percentile(vals, [lo, hi])
    return f"{_fmt(float(a), 3)} .. {_fmt(float(b), 3)}"


def _streaking_text(value: float) -> str:
    """The Chimap's ``StreakingIndex`` with its one-sentence reading
    (:mod:`qsm_bids.core.streaking`)."""
    text = (
        f"{_fmt(float(value), 2)}: k-space power on the dipole cone over the power off it; "
        f"~1 isotropic, above {STREAKING_FLAG:g} suggests streaking along the dipole cone, "
        "below 1 a suppressed cone (strong regularisation)"
    )
    if value > STREAKING_FLAG:
        text += "; look for streaks through veins and strong sources"
    return text


def _run_figures(
    run: RunFiles,
    figures_dir: Path,
    sidecar: Mapping[str, Any],
    bids_dir: Path | None,
    problems: list[str],
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Draw a run's figures; returns ``[(path, caption, alt)]`` and QC numbers."""
    from qsm_bids.report import figures as fg

    out: list[tuple[str, str, str]] = []
    qc: list[tuple[str, str]] = []

    def load(path: Path | None, what: str):
        if path is None:
            return None
        try:
            return fg.load_ras(path)
        except Exception as exc:  # a broken file must not stop the report
            problems.append(f"cannot read the {what} ({path.name}): {exc}")
            return None

    chi = load(run.get("Chimap"), "susceptibility map")
    mask_img = load(run.get("mask", desc="brain"), "brain mask")
    local_img = load(run.get("mask", desc="local"), "background-removal mask")
    ref = chi or mask_img
    shape = ref[0].shape if ref else None
    mask = mask_img[0] > 0 if mask_img else None
    local = local_img[0] > 0 if local_img else None
    if shape is not None:
        if mask is not None and mask.shape != shape:
            mask = None
        if local is not None and local.shape != shape:
            local = None
    vox = ref[1] if ref else (1.0, 1.0, 1.0)
    cut = fg.center_of(mask, shape, voxel_mm=vox, sagittal_offset_mm=-20.0) if shape else None
    crop = fg.bounding_box(mask, shape, margin=4) if shape else None
    # the magnitude is shown with more of the head around the mask (20 mm)
    wide = (
        fg.bounding_box(mask, shape, margin=[int(np.ceil(20 / v)) for v in vox]) if shape else None
    )
    brain = [(mask, *fg.BRAIN_CONTOUR)] if mask is not None else []
    both = brain + ([(local, *fg.LOCAL_CONTOUR)] if local is not None else [])
    if mask is not None:
        voxel_ml = float(np.prod(mask_img[1])) / 1000.0
        qc.append(("brain mask volume (mL)", _fmt(float(mask.sum()) * voxel_ml, 1)))
        if local is not None and mask.sum():
            qc.append(
                ("background-removal mask / brain mask", f"{100 * local.sum() / mask.sum():.1f} %")
            )

    def draw(name: str, data: np.ndarray, vox, caption: str, **kw) -> None:
        path = figures_dir / f"{run.prefix}_desc-{name}_slices.png"
        kw.setdefault("crop", crop)
        try:
            fg.plot_orthogonal(data, vox, path, cut=cut, **kw)
        except Exception as exc:
            problems.append(f"could not draw the {name} figure: {exc}")
            return
        out.append((path, caption, f"{run.prefix} {name}"))

    mag_path = first_echo_magnitude(run, sidecar, bids_dir)
    mag = load(mag_path, "first-echo magnitude")
    if mag is not None and shape is not None and mag[0].shape == shape:
        lo, hi = fg.robust_window(mag[0], mask, percentile=99.5)
        draw(
            "magnitude",
            mag[0],
            mag[1],
            f"First-echo magnitude (<code>{_e(mag_path.name)}</code>) with the brain-mask "
            "outline (red): check that the mask covers the brain and excludes the skull.",
            vmin=0.0,
            vmax=hi,
            crop=wide,
            title="first-echo magnitude",
            contours=brain,
        )
    elif bids_dir is not None and mag is None:
        problems.append("the raw first-echo magnitude image was not found")

    for desc, title in (("total", "total field"), ("local", "local field")):
        img = load(run.get("fieldmap", desc=desc), f"{title} map")
        if img is None or (shape is not None and img[0].shape != shape):
            continue
        use = mask if desc == "total" else (local if local is not None else mask)
        lo, hi = fg.robust_window(img[0], use, percentile=99.0, symmetric=True)
        qc.append((f"{title}, 1st..99th percentile (Hz)", _percentiles(img[0], use, 1, 99)))
        inside = use if use is not None else np.ones(img[0].shape, dtype=bool)
        draw(
            f"{desc}field",
            np.where(inside, img[0], np.nan),
            img[1],
            (
                "Total field map (Hz) after unwrapping and echo combination: smooth, without "
                "phase wraps or jumps inside the mask."
                if desc == "total"
                else "Local (tissue) field map (Hz) after background-field removal: no "
                "residual large-scale gradients; the dashed yellow outline is the region it "
                "is defined in."
            ),
            cmap="RdBu_r",
            vmin=lo,
            vmax=hi,
            units="Hz",
            title=title,
            contours=brain if desc == "total" else both,
        )

    if chi is not None:
        use = local if local is not None else mask
        qc.append(("susceptibility, 1st..99th percentile (ppm)", _percentiles(chi[0], use, 1, 99)))
        if isinstance(sidecar.get("StreakingIndex"), int | float):
            qc.append(("streaking index (dipole cone)", _streaking_text(sidecar["StreakingIndex"])))
        draw(
            "qsm",
            chi[0],
            chi[1],
            f"Susceptibility map (ppm, window &plusmn;{QSM_WINDOW_PPM} ppm) with the brain "
            "(red) and background-removal (dashed yellow) outlines. Deep grey nuclei and "
            "veins should be bright (paramagnetic); look for streaks and rim artefacts.",
            cmap="gray",
            vmin=-QSM_WINDOW_PPM,
            vmax=QSM_WINDOW_PPM,
            units="ppm",
            title="susceptibility",
            contours=both,
        )
        dseg = load(run.get("dseg", space="orig"), "atlas labels")
        if dseg is not None and dseg[0].shape == chi[0].shape:
            draw(
                "atlas",
                chi[0],
                chi[1],
                "Atlas labels (AAL3, transformed to the subject) over the susceptibility "
                "map: they should sit on the deep grey nuclei.",
                cmap="gray",
                vmin=-QSM_WINDOW_PPM,
                vmax=QSM_WINDOW_PPM,
                units="ppm",
                title="atlas labels in subject space",
                labels=np.rint(dseg[0]).astype(np.int32),
            )
        user_segs = sorted(
            (desc, path)
            for (space, desc, suffix, ext), path in run.files.items()
            if suffix == "dseg" and space == "orig" and desc and ext in (".nii.gz", ".nii")
        )
        for desc, path in user_segs:
            seg = load(path, f"segmentation {desc}")
            if seg is None or seg[0].shape != chi[0].shape:
                continue
            draw(
                f"seg{desc}",
                chi[0],
                chi[1],
                f"Your segmentation <code>{_e(desc)}</code> on the GRE grid (resampled by "
                "world coordinates, no registration) over the susceptibility map: it should "
                "sit on the structures it names; a shift means it is not in this session's "
                "scanner space.",
                cmap="gray",
                vmin=-QSM_WINDOW_PPM,
                vmax=QSM_WINDOW_PPM,
                units="ppm",
                title=f"segmentation {desc}",
                labels=np.rint(seg[0]).astype(np.int32),
            )
    else:
        problems.append("no susceptibility map (Chimap) was written for this run")

    r2 = load(run.get("R2starmap"), "R2* map")
    if r2 is not None and shape is not None and r2[0].shape == shape:
        lo, hi = fg.robust_window(r2[0], mask, percentile=99.0)
        draw(
            "r2star",
            r2[0],
            r2[1],
            "R2* map (1/s).",
            cmap="magma",
            vmin=0.0,
            vmax=hi,
            units="1/s",
            title="R2*",
            contours=brain,
        )

    mni = run.get("Chimap", space=fg.TEMPLATE_SPACE)
    if mni is not None:
        path = figures_dir / f"{run.prefix}_space-{fg.TEMPLATE_SPACE}_desc-reg_slices.png"
        try:
            fg.plot_registration(mni, path, window_ppm=QSM_WINDOW_PPM)
            out.append(
                (
                    path,
                    f"Registration check: the susceptibility map resampled to "
                    f"{fg.TEMPLATE_SPACE}, under the template's brain (red) and white-matter "
                    "(blue) outlines. The outlines should follow the brain's edge and the "
                    "deep grey nuclei.",
                    f"{run.prefix} registration",
                )
            )
        except Exception as exc:
            problems.append(f"could not draw the registration figure: {exc}")
    return out, qc


def _run_section(
    run: RunFiles, output_dir: Path, figures_dir: Path, bids_dir: Path | None
) -> tuple[str, str]:
    """HTML of one run's section; returns (html, software version found)."""
    sidecars = run.sidecars()
    main_side = sidecars[0][1] if sidecars else {}
    stages = collect_stages(sidecars)
    warnings, notes = collect_messages(sidecars)
    problems: list[str] = []
    figs, qc = _run_figures(run, figures_dir, main_side, bids_dir, problems)
    parts = [
        f'<section id="{_e(run.prefix)}"><h2>{_e(run.label)}: <code>{_e(run.prefix)}</code></h2>'
    ]
    for text in problems:
        parts.append(f'<div class="error">{_e(text)}</div>')
    if qc:
        parts.append(
            "<h3>Summary</h3><table>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in qc)
            + "</table>"
        )
    parts.append("<h3>Images</h3>")
    for path, caption, alt in figs:
        src = Path(os.path.relpath(path, output_dir)).as_posix()
        parts.append(_figure(src, caption, alt))
    for seg, stats_path in regionstats_files(run):
        try:
            rows = read_regionstats(stats_path)
        except (OSError, ValueError, csv.Error) as exc:
            parts.append(f'<div class="error">cannot read {_e(stats_path.name)}: {_e(exc)}</div>')
            rows = []
        if rows:
            deep, rest = _region_rows(rows)
            if seg == "aal3":
                title, what = "AAL3 atlas", ": deep grey matter and the whole brain"
            else:
                title, what = f"segmentation <code>{_e(seg)}</code>", " (your segmentation)"
                if len(rows) <= MAX_REGION_ROWS:  # a user's regions: all of them in view
                    deep, rest = deep + rest, []
            parts.append(
                f"<h3>Regional susceptibility, {title}</h3><p>From "
                f"<code>{_e(stats_path.name)}</code>{what}.</p>" + _region_table(deep, deep=True)
            )
            if rest:
                parts.append(
                    f"<details><summary>All other regions ({len(rest)})</summary>"
                    + _region_table(rest, deep=False)
                    + "</details>"
                )
    parts.append("<h3>Methods and parameters</h3>")
    parts.append(_methods_text(stages, main_side))
    parts.append(_stages_table(stages))
    sources = main_side.get("Sources") or []
    if sources:
        parts.append(
            f"<details><summary>Input files ({len(sources)})</summary><ul>"
            + "".join(f"<li><code>{_e(s)}</code></li>" for s in sources)
            + "</ul></details>"
        )
    parts.append("<h3>Warnings and notes</h3>")
    parts.append(_messages_html(warnings, notes))
    version = str(main_side.get("SoftwareVersion", ""))
    if version:
        parts.append(f"<p>Software: <code>{_e(version)}</code></p>")
    parts.append("</section>")
    return "".join(parts), version


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def write_subject_report(output_dir: Path, subject: str, *, bids_dir: Path | None = None) -> Path:
    """Write the HTML report of one participant, ``<output_dir>/sub-<label>.html``.

    Parameters
    ----------
    output_dir : Path
        Root of the qsm_bids derivatives (the participant level's ``OUTPUT_DIR``).
    subject : str
        Participant label, with or without ``sub-``.
    bids_dir : Path or None, default None
        The raw dataset: the first-echo magnitude is shown from it, and its runs without
        derivatives are listed as errors. ``None``: no magnitude figure, no such check.

    Returns
    -------
    Path
        The page; its figures are PNG files in ``<output_dir>/sub-<label>/figures/``.
        Every file is written atomically (temporary file, then rename).

    Raises
    ------
    QSMInputError
        If the subject has neither derivatives in ``output_dir`` nor runs in ``bids_dir``.
    """
    output_dir = Path(output_dir)
    label = subject.removeprefix("sub-")
    runs = find_subject_runs(output_dir, label)
    raw_runs = find_raw_runs(Path(bids_dir), label) if bids_dir is not None else {}
    if not runs and not raw_runs:
        raise QSMInputError(
            output_dir / f"sub-{label}",
            f"no qsm_bids derivatives of participant {label!r}; run the participant level first",
        )
    figures_dir = output_dir / f"sub-{label}" / "figures"
    # the magnitude is read from the raw dataset; without bids_dir, from the one the
    # derivatives record in DatasetLinks when it still exists
    image_root = Path(bids_dir) if bids_dir is not None else _raw_root_from_description(output_dir)
    sections = []
    versions = []
    for run in runs:
        text, version = _run_section(run, output_dir, figures_dir, image_root)
        sections.append(text)
        if version and version not in versions:
            versions.append(version)
    done = {r.prefix for r in runs if r.get("Chimap") is not None}
    errors = [
        f"{prefix}: no susceptibility map in the output folder (the run failed or was not "
        "processed; see the participant level's log and the crash files in its work folder)"
        for prefix in raw_runs
        if prefix not in done and prefix not in {r.prefix for r in runs}
    ]
    errors += [
        f"{r.prefix}: some derivatives exist but no susceptibility map (Chimap)"
        for r in runs
        if r.prefix not in done
    ]
    n_sessions = len({r.entities.get("ses") for r in runs if "ses" in r.entities})
    generated = _generated_by(output_dir)

    nav = ['<a href="#summary">Summary</a>']
    nav += [f'<a href="#{_e(r.prefix)}">{_e(r.label)}</a>' for r in runs]
    nav += ['<a href="#about">About</a>', '<a href="#errors">Errors</a>']
    summary_rows = [
        ("Participant", f"sub-{label}"),
        ("Sessions", str(n_sessions) if n_sessions else "none (single-session dataset)"),
        ("Runs with derivatives", str(len(runs))),
        ("Runs with a susceptibility map", str(len(done))),
    ]
    if bids_dir is not None:
        summary_rows.append(("Runs in the raw dataset", str(len(raw_runs))))
    pipelines = sorted(
        {str(s.get("Pipeline")) for r in runs for _, s in r.sidecars()[:1] if s.get("Pipeline")}
    )
    if pipelines:
        summary_rows.append(("Recipe", ", ".join(pipelines)))
    summary_rows.append(("Software", ", ".join(versions) or f"qsm_bids {__version__}"))

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>qsm_bids report: sub-{_e(label)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<nav>" + "".join(nav) + "</nav><main>",
        f"<h1>qsm_bids: participant <code>sub-{_e(label)}</code></h1>",
        '<section id="summary"><h2>Summary</h2><table>',
        "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary_rows),
        "</table>",
        "".join(f'<div class="error">{_e(t)}</div>' for t in errors),
        "</section>",
        *sections,
        '<section id="about"><h2>About</h2><table>',
        f"<tr><th>Report written by</th><td>qsm_bids {_e(__version__)}</td></tr>",
        f"<tr><th>Date</th><td>{_e(now)}</td></tr>",
        f"<tr><th>Derivatives</th><td><code>{_e(output_dir.resolve())}</code></td></tr>",
    ]
    if bids_dir is not None:
        page.append(
            f"<tr><th>Raw dataset</th><td><code>{_e(Path(bids_dir).resolve())}</code></td></tr>"
        )
    for k, v in generated:
        page.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    page += [
        "</table></section>",
        '<section id="errors"><h2>Errors</h2>',
        "".join(f'<div class="error">{_e(t)}</div>' for t in errors)
        or '<p class="ok">No errors to report.</p>',
        "</section></main></body></html>",
    ]
    return write_text_atomic(output_dir / f"sub-{label}.html", "\n".join(page) + "\n")


def _generated_by(output_dir: Path) -> list[tuple[str, str]]:
    """(field, value) rows from the derivatives' ``dataset_description.json``."""
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text("utf-8"))
    except (OSError, ValueError):
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


__all__ = [
    "RunFiles",
    "collect_messages",
    "collect_stages",
    "find_raw_runs",
    "find_subject_runs",
    "first_echo_magnitude",
    "read_regionstats",
    "split_bids_name",
    "write_subject_report",
    "write_text_atomic",
]
