"""The per-subject HTML report (``<output_dir>/sub-<label>.html``), assembled from the
reportlets, the sidecars and a jinja2 template, in the spirit of fMRIPrep's.

The page is self-contained and readable offline: inline CSS, no JavaScript, no web fonts,
and figures in ``<output_dir>/sub-<label>/figures/`` referenced by relative path. It has
one section per run (a run is identified by its derivative maps, see
:mod:`qsm_bids.report.discovery`) with

* each stage's QC figure: the reportlets the run drew (:mod:`qsm_bids.interfaces.reportlets`),
  or, for outputs without them (``--reports-only`` on an older output folder), the same
  figures drawn here from the derivatives (those that can be: brain mask, fields,
  susceptibility, streaking index, R2*, registration, labels);
* the registration's overlay and its measured quality (the transform's sidecar);
* the regional statistics tables (deep grey matter first), AAL3 first, then the user
  segmentations;
* the methods text (:mod:`qsm_bids.report.boilerplate` when available) and every stage's
  algorithm and parameters, read from the sidecars' ``Stages``;
* the run's processing notes and warnings, and the software version.

Runs of the raw dataset without derivatives (failed or not processed) are listed under
"Errors".
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from markupsafe import Markup

from qsm_bids import __version__
from qsm_bids.bids.derivatives import write_text_atomic
from qsm_bids.errors import QSMInputError
from qsm_bids.report import collect
from qsm_bids.report import reportlets as rl
from qsm_bids.report.discovery import (
    RunFiles,
    find_raw_runs,
    find_subject_runs,
    first_echo_magnitude,
    raw_root_from_description,
)

#: The page's template (in ``qsm_bids/report/templates/``).
TEMPLATE = "subject.html.j2"


@lru_cache(maxsize=1)
def _environment():
    """The jinja2 environment: templates of the package, HTML autoescape, and an error on
    any undefined variable."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("qsm_bids.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """Render one of the report's templates (StrictUndefined: a missing variable raises)."""
    return _environment().get_template(template).render(**context)


# --------------------------------------------------------------------------------------
# Figures of a run
# --------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One figure of a run's section."""

    desc: str
    src: str
    title: str
    caption: str
    stage: str


def _figure_makers(
    run: RunFiles, sidecar: Mapping[str, Any], image_root: Path | None
) -> dict[str, Callable[[Path], Path] | None]:
    """``desc -> draw(path)`` for the figures that can be drawn from the derivatives
    (``None``: this run's derivatives do not have what it needs)."""
    chi = run.get("Chimap")
    brain = run.get("mask", desc="brain")
    local = run.get("mask", desc="local")
    total = run.get("fieldmap", desc="total")
    local_field = run.get("fieldmap", desc="local")
    r2star = run.get("R2starmap")
    mni = run.get("Chimap", space=rl.fg.TEMPLATE_SPACE)
    atlas = run.atlas_labels()
    streak = sidecar.get("StreakingIndex")

    def brainmask(path: Path) -> Path:
        magnitude = first_echo_magnitude(run, sidecar, image_root)
        if magnitude is None:
            raise FileNotFoundError("the raw first-echo magnitude image was not found")
        return rl.brainmask_figure(path, brain, magnitude=magnitude)  # type: ignore[arg-type]

    makers: dict[str, Callable[[Path], Path] | None] = {
        "brainmask": brainmask if brain and image_root is not None else None,
        "unwrapped": None,
        "totalfield": (lambda p: rl.field_figure(p, total, brain)) if total and brain else None,
        "echofit": None,
        "localfield": (
            (
                lambda p: rl.field_figure(
                    p, local_field, brain, local_mask=local, title="local field"
                )
            )
            if local_field and brain
            else None
        ),
        "chimap": (lambda p: rl.chimap_figure(p, chi, brain, local_mask=local)) if chi else None,
        "reference": None,
        "streaking": (
            (lambda p: rl.streaking_figure(p, float(streak)))
            if isinstance(streak, int | float) and not isinstance(streak, bool)
            else None
        ),
        "r2star": (lambda p: rl.r2star_figure(p, r2star, brain)) if r2star and brain else None,
        "registration": (lambda p: rl.registration_figure(p, mni)) if mni else None,
        "atlas": (
            (
                lambda p: rl.labels_figure(
                    p, chi, atlas, mask=brain, title="atlas labels in subject space"
                )
            )
            if chi and atlas
            else None
        ),
    }
    for name, path in run.segmentations():
        makers[f"seg{name}"] = (
            (
                lambda p, s=path, n=name: rl.labels_figure(
                    p, chi, s, mask=brain, title=f"segmentation {n}"
                )
            )
            if chi
            else None
        )
    return makers


def run_figures(
    run: RunFiles,
    output_dir: Path,
    sidecar: Mapping[str, Any],
    image_root: Path | None,
    problems: list[str],
) -> list[Figure]:
    """A run's figures in pipeline order: its reportlets, and the missing ones drawn now
    from the derivatives where they can be.

    Parameters
    ----------
    run : RunFiles
        The run's derivatives.
    output_dir : Path
        Root of the derivatives (the figures are in ``sub-<label>/figures/``).
    sidecar : mapping
        The Chimap's sidecar (``Sources``, ``StreakingIndex``).
    image_root : Path or None
        The raw dataset, for the magnitude of the brain-mask figure.
    problems : list of str
        Figures that could not be drawn are appended here.

    Returns
    -------
    list of Figure
    """
    makers = _figure_makers(run, sidecar, image_root)
    specs = dict(rl.FIGURES)
    for name, _ in run.segmentations():
        specs[f"seg{name}"] = rl.FigureSpec(
            "registration", f"Segmentation {name}", rl.SEGMENTATION_CAPTION
        )
    # a figure is shown only beside the derivatives it is about (a reportlet left from an
    # earlier run with registration is not shown when the run has no registration now)
    shown = {
        "registration": bool(run.transforms)
        or run.get("Chimap", space=rl.fg.TEMPLATE_SPACE) is not None,
        "atlas": run.atlas_labels() is not None,
        "r2star": run.get("R2starmap") is not None,
    }
    out = []
    for desc, spec in specs.items():
        if not shown.get(desc, True):
            continue
        path = rl.find_figure(output_dir, run.prefix, desc)
        if path is None and makers.get(desc) is not None:
            target = rl.figure_path(output_dir, run.prefix, desc)
            try:
                path = makers[desc](target)  # type: ignore[misc]
            except Exception as exc:  # a broken file must not stop the report
                problems.append(f"could not draw the {spec.title.lower()} figure: {exc}")
        if path is None:
            continue
        src = Path(os.path.relpath(path, output_dir)).as_posix()
        out.append(Figure(desc, src, spec.title, spec.caption, spec.stage))
    return out


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


def methods_html(
    stages: dict[str, dict[str, Any]],
    side: Mapping[str, Any],
    *,
    registration: bool,
    segmentation: str | None,
) -> Markup:
    """The run's methods text with its references as an HTML fragment
    (:func:`qsm_bids.report.boilerplate.build_boilerplate`).

    Parameters
    ----------
    stages : dict
        Every stage's algorithm and parameters (:func:`collect.collect_stages`, from all of
        the run's sidecars).
    side : mapping
        The Chimap's sidecar (``EchoTime``, ``MagneticFieldStrength``, ``Pipeline``,
        ``SoftwareVersion``).
    registration : bool
        The run was registered to the template (transforms or a template-space map exist).
    segmentation : str or None
        A user segmentation whose table was written.
    """
    from qsm_bids.report.boilerplate import build_boilerplate, default_versions

    versions = default_versions()
    written_by = str(side.get("SoftwareVersion", ""))
    if written_by.startswith("qsm_bids "):  # the version that made the maps
        versions["qsm_bids"] = written_by.removeprefix("qsm_bids ")
    text = build_boilerplate(
        {**side, "Stages": stages},
        registration=registration,
        segmentation=segmentation,
        versions=versions,
    )
    return Markup(text.html)


# --------------------------------------------------------------------------------------
# A run's section
# --------------------------------------------------------------------------------------


@dataclass
class RegionTable:
    """A regional table of a run's section."""

    title: Markup
    source: str
    what: str
    deep: list[collect.RegionRow]
    rest: list[collect.RegionRow]
    error: str = ""


@dataclass
class RunSection:
    """Everything the template shows of one run."""

    id: str
    label: str
    prefix: str
    problems: list[str]
    numbers: list[tuple[str, str]]
    figures: list[Figure]
    registration_figures: list[Figure]
    registration: collect.RegistrationInfo | None
    registration_rows: list[tuple[str, str]]
    tables: list[RegionTable]
    methods: Markup
    stages: list[dict[str, Any]]
    sources: list[str]
    warnings: list[str]
    notes: list[str]
    version: str
    has_chimap: bool
    pipeline: str = ""


def _quality_text(value: Any) -> str:
    """A ``RegistrationQuality`` value for display: numbers to 3 decimals, yes/no,
    ``key value`` pairs, lists joined (``none`` when empty)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return collect.fmt_number(value, 3)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_quality_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return "; ".join(_quality_text(v) for v in value) or "none"
    return str(value)


def _quality_rows(info: collect.RegistrationInfo | None) -> list[tuple[str, str]]:
    if info is None:
        return []
    rows = [(str(key), _quality_text(value)) for key, value in info.quality.items()]
    if info.regional_statistics:
        rows.append(("RegionalStatistics", info.regional_statistics))
    return rows


def _region_tables(run: RunFiles) -> list[RegionTable]:
    tables = []
    for seg, path in collect.regionstats_files(run):
        if seg == "aal3":
            title, what = Markup("AAL3 atlas"), ": deep grey matter and the whole brain"
        else:
            title = Markup("segmentation <code>{}</code>").format(seg)
            what = " (your segmentation)"
        try:
            rows = collect.read_regionstats(path)
        except (OSError, ValueError, csv.Error) as exc:
            tables.append(RegionTable(title, path.name, what, [], [], f"cannot read: {exc}"))
            continue
        if not rows:
            continue
        deep, rest = collect.split_region_rows(rows)
        if seg != "aal3" and len(rows) <= collect.MAX_REGION_ROWS:
            deep, rest = deep + rest, []  # a user's regions: all of them in view
        tables.append(
            RegionTable(
                title,
                path.name,
                what,
                collect.region_rows(deep, deep=True),
                collect.region_rows(rest, deep=False),
            )
        )
    return tables


def run_section(run: RunFiles, output_dir: Path, image_root: Path | None) -> RunSection:
    """Collect what the template shows of one run (and draw its missing figures)."""
    sidecars = run.sidecars()
    main_side = sidecars[0][1] if sidecars else {}
    stages = collect.collect_stages(sidecars)
    warnings, notes = collect.collect_messages(sidecars + run.xfm_sidecars())
    problems: list[str] = []
    numbers = collect.acquisition_rows(main_side) + collect.summary_numbers(
        run, main_side, problems
    )
    figures = run_figures(run, output_dir, main_side, image_root, problems)
    has_chimap = run.get("Chimap") is not None
    if not has_chimap:
        problems.append("no susceptibility map (Chimap) was written for this run")
    info = collect.registration_info(run)
    registered = bool(run.transforms) or run.get("Chimap", space=rl.fg.TEMPLATE_SPACE) is not None
    segs = [name for name, _ in run.segmentations()]
    stage_rows = [
        {
            "name": name,
            "friendly": collect.STAGE_NAMES.get(name, name),
            "algorithm": spec["Algorithm"],
            "parameters": [(k, collect.fmt_param(v)) for k, v in spec["Parameters"].items()],
        }
        for name, spec in stages.items()
    ]
    sources = main_side.get("Sources") or []
    return RunSection(
        id=run.prefix,
        label=run.label,
        prefix=run.prefix,
        problems=problems,
        numbers=numbers,
        figures=[f for f in figures if f.stage != "registration"],
        registration_figures=[f for f in figures if f.stage == "registration"],
        registration=info,
        registration_rows=_quality_rows(info),
        tables=_region_tables(run),
        methods=methods_html(
            stages, main_side, registration=registered, segmentation=segs[0] if segs else None
        ),
        stages=stage_rows,
        sources=[str(s) for s in sources] if isinstance(sources, list) else [],
        warnings=warnings,
        notes=notes,
        version=str(main_side.get("SoftwareVersion", "")),
        has_chimap=has_chimap,
        pipeline=str(main_side.get("Pipeline", "") or ""),
    )


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
        The raw dataset: its runs without derivatives are listed as errors, and the
        first-echo magnitude is read from it when the brain-mask figure has to be drawn.
        ``None``: the raw dataset recorded in the derivatives' ``DatasetLinks`` is used
        for the magnitude when it still exists; no check of missing runs.

    Returns
    -------
    Path
        The page; its figures are in ``<output_dir>/sub-<label>/figures/``. Every file is
        written atomically (temporary file, then rename).

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
    image_root = Path(bids_dir) if bids_dir is not None else raw_root_from_description(output_dir)
    sections = [run_section(run, output_dir, image_root) for run in runs]
    first_with: dict[str, RunSection] = {}
    for section in sections:  # one methods text (and reference list) per distinct text
        same = first_with.setdefault(str(section.methods), section)
        if same is not section:
            section.methods = Markup(
                '<p>The methods text is the same as for <a href="#{}">{}</a>.</p>'
            ).format(same.id, same.label)
    versions = list(dict.fromkeys(s.version for s in sections if s.version))
    done = {s.prefix for s in sections if s.has_chimap}
    errors = [
        f"{prefix}: no susceptibility map in the output folder (the run failed or was not "
        "processed; see the participant level's log and the crash files in its work folder)"
        for prefix in raw_runs
        if prefix not in {r.prefix for r in runs}
    ]
    errors += [
        f"{s.prefix}: some derivatives exist but no susceptibility map (Chimap)"
        for s in sections
        if not s.has_chimap
    ]
    n_sessions = len({r.entities.get("ses") for r in runs if "ses" in r.entities})
    summary = [
        ("Participant", f"sub-{label}"),
        ("Sessions", str(n_sessions) if n_sessions else "none (single-session dataset)"),
        ("Runs with derivatives", str(len(runs))),
        ("Runs with a susceptibility map", str(len(done))),
    ]
    if bids_dir is not None:
        summary.append(("Runs in the raw dataset", str(len(raw_runs))))
    pipelines = sorted({s.pipeline for s in sections if s.pipeline})
    if pipelines:
        summary.append(("Recipe", ", ".join(pipelines)))
    summary.append(("Software", ", ".join(versions) or f"qsm_bids {__version__}"))
    about = [
        ("Report written by", f"qsm_bids {__version__}"),
        ("Date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Derivatives", str(output_dir.resolve())),
    ]
    if bids_dir is not None:
        about.append(("Raw dataset", str(Path(bids_dir).resolve())))
    about += collect.generated_by(output_dir)
    page = render(
        TEMPLATE,
        subject=f"sub-{label}",
        summary=summary,
        errors=errors,
        runs=sections,
        about=about,
        stat_headings=[title for _, title, _ in collect.STAT_COLUMNS],
    )
    return write_text_atomic(output_dir / f"sub-{label}.html", page)


__all__ = [
    "Figure",
    "RunSection",
    "methods_html",
    "render",
    "run_figures",
    "run_section",
    "write_subject_report",
]
