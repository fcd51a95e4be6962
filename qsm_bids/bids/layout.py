"""Find the multi-echo GRE runs of a BIDS dataset and read their metadata.

A run is the set of ``sub-<label>/[ses-<label>/]anat/*_echo-<n>_part-{mag,phase}_MEGRE``
(or ``_T2starw``) images that share subject, session, acquisition, run and every other
entity except ``echo`` and ``part``. Metadata is read through pybids, so sidecars
inherited from the subject, session or dataset level are honoured.

Indexing keeps the input dataset untouched (the pybids database lives in memory), skips
every data type folder other than ``anat/`` and reads metadata only for MEGRE/T2starw
images, so it stays fast on large datasets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsm_bids.core.physics import GAMMA_BAR_MHZ_PER_T
from qsm_bids.errors import QSMInputError

#: Raw suffixes that carry multi-echo GRE phase.
SUFFIXES: tuple[str, ...] = ("MEGRE", "T2starw")

#: Entities that identify a run, as (pybids name, BIDS key), in the BIDS filename order.
#: ``echo`` and ``part`` are left out: they vary within a run.
RUN_ENTITIES: tuple[tuple[str, str], ...] = (
    ("subject", "sub"),
    ("session", "ses"),
    ("task", "task"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("direction", "dir"),
    ("run", "run"),
    ("modality", "mod"),
    ("flip", "flip"),
    ("inv", "inv"),
    ("mt", "mt"),
    ("proc", "proc"),
    ("chunk", "chunk"),
)

#: Echo times above this (in the sidecar's unit) are taken to be milliseconds.
_MAX_ECHO_TIME_S = 1.0
#: Plausible static field strengths (T).
_FIELD_RANGE_T = (0.05, 25.0)


@dataclass(frozen=True)
class Run:
    """One multi-echo GRE acquisition: its files and the metadata that QSM needs.

    Attributes
    ----------
    subject, session, acquisition, run : str or None
        Entity labels without their ``sub-``/``ses-``/... prefix (``subject`` is always set).
    suffix : str
        ``"MEGRE"`` or ``"T2starw"``.
    phase_files : tuple of Path
        Phase images, sorted by echo number.
    magnitude_files : tuple of Path
        Magnitude images in the same echo order, or empty for phase-only data.
    echo_times : tuple of float
        Echo times in s, strictly increasing.
    field_strength : float
        Static field strength in T.
    entities : dict
        Every identifying entity, ``{BIDS key: label}`` in BIDS filename order
        (``{"sub": "01", "ses": "A", "acq": "x", "run": "1"}``); used to name derivatives.
    warnings : tuple of str
        Things the user should know (e.g. field strength derived from ImagingFrequency).
    phase_units : str
        The phase sidecar's ``Units`` (lower case), or ``""`` when absent.
    """

    subject: str
    session: str | None
    acquisition: str | None
    run: str | None
    suffix: str
    phase_files: tuple[Path, ...]
    magnitude_files: tuple[Path, ...]
    echo_times: tuple[float, ...]
    field_strength: float
    entities: dict = field(default_factory=dict, hash=False, compare=True)
    warnings: tuple[str, ...] = ()
    phase_units: str = ""

    @property
    def name(self) -> str:
        """The run's entities as a filename prefix, e.g. ``"sub-01_ses-A_acq-x_run-1"``."""
        ents = self.entities or _fallback_entities(self)
        return "_".join(f"{k}-{v}" for k, v in ents.items())

    @property
    def has_magnitude(self) -> bool:
        """Whether magnitude images are available."""
        return bool(self.magnitude_files)


def _fallback_entities(run: Run) -> dict[str, str]:
    ents = {"sub": run.subject, "ses": run.session, "acq": run.acquisition, "run": run.run}
    return {k: v for k, v in ents.items() if v is not None}


def _strip_prefix(label: str, prefix: str) -> str:
    label = str(label).strip().strip("/")
    return label[len(prefix) :] if label.startswith(prefix) else label


def _check_dataset(bids_dir: Path) -> Path:
    bids_dir = Path(bids_dir)
    if not bids_dir.exists():
        raise QSMInputError(bids_dir, "BIDS dataset directory does not exist")
    if not bids_dir.is_dir():
        raise QSMInputError(bids_dir, "is not a directory; expected a BIDS dataset")
    has_desc = (bids_dir / "dataset_description.json").is_file()
    has_subjects = any(p.is_dir() for p in bids_dir.glob("sub-*"))
    if not has_desc and not has_subjects:
        raise QSMInputError(
            bids_dir,
            "not a BIDS dataset: no dataset_description.json and no sub-* folders",
        )
    return bids_dir.resolve()


def _make_layout(bids_dir: Path) -> Any:
    """An in-memory pybids layout that indexes only what QSM needs."""
    import bids
    from bids.layout import BIDSLayoutIndexer

    ignore = [
        "code",
        "sourcedata",
        "stimuli",
        "models",
        "derivatives",
        re.compile(r"^/\."),  # hidden files and folders
        # every data type folder except anat/ (files at subject/session level are kept:
        # they may be inherited sidecars)
        re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(?!anat(/|$)|ses-)[^/.]+(/|$)"),
    ]
    # metadata is indexed only for the files passed as filters to the indexer
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, suffix=list(SUFFIXES))
    try:
        return bids.BIDSLayout(str(bids_dir), validate=False, derivatives=False, indexer=indexer)
    except Exception as exc:  # pybids raises assorted errors on malformed datasets
        raise QSMInputError(bids_dir, f"pybids cannot index the dataset: {exc}") from exc


def _get_metadata(layout: Any, path: Path) -> dict:
    try:
        return dict(layout.get_metadata(str(path)))
    except Exception as exc:  # e.g. a sidecar that is not valid JSON
        raise QSMInputError(path, f"cannot read the JSON sidecar metadata: {exc}") from exc


def _echo_time(meta: Mapping[str, Any], path: Path) -> float:
    value = meta.get("EchoTime")
    if value is None:
        raise QSMInputError(
            path,
            "missing EchoTime (s) in its JSON sidecar (or an inherited one); "
            "it is required for MEGRE",
        )
    if isinstance(value, list):
        if len(value) != 1:
            raise QSMInputError(path, f"EchoTime is a list {value}; expected one number")
        value = value[0]
    try:
        te = float(value)
    except (TypeError, ValueError):
        raise QSMInputError(path, f"EchoTime {value!r} is not a number") from None
    if not te > 0:
        raise QSMInputError(path, f"EchoTime {value} must be positive (in seconds)")
    if te > _MAX_ECHO_TIME_S:
        raise QSMInputError(
            path, f"EchoTime {value:g} looks like milliseconds; BIDS requires seconds"
        )
    return te


def _field_strength(meta: Mapping[str, Any], path: Path) -> tuple[float, str | None]:
    """(field strength in T, optional warning) from MagneticFieldStrength or ImagingFrequency."""
    lo, hi = _FIELD_RANGE_T
    b0 = meta.get("MagneticFieldStrength")
    if b0 is not None:
        try:
            b0 = float(b0)
        except (TypeError, ValueError):
            raise QSMInputError(path, f"MagneticFieldStrength {b0!r} is not a number") from None
        if not lo <= b0 <= hi:
            raise QSMInputError(
                path, f"MagneticFieldStrength {b0:g} is not a plausible field strength in T"
            )
        return b0, None
    freq = meta.get("ImagingFrequency")
    if freq is not None:
        try:
            freq = float(freq)
        except (TypeError, ValueError):
            raise QSMInputError(path, f"ImagingFrequency {freq!r} is not a number") from None
        b0 = freq / GAMMA_BAR_MHZ_PER_T
        if not lo <= b0 <= hi:
            raise QSMInputError(
                path,
                f"ImagingFrequency {freq:g} is not a plausible proton frequency in MHz "
                f"(it gives {b0:g} T)",
            )
        return b0, (
            f"MagneticFieldStrength missing: field strength {b0:.4f} T derived from "
            f"ImagingFrequency {freq:g} MHz"
        )
    raise QSMInputError(
        path,
        "missing both MagneticFieldStrength (T) and ImagingFrequency (MHz) in the JSON "
        "sidecar; one is needed to convert the field to ppm",
    )


def _normalise_labels(
    labels: Iterable[str] | None, prefix: str, available: list[str], what: str, where: Path
) -> list[str] | None:
    if labels is None:
        return None
    wanted = [_strip_prefix(lab, prefix) for lab in labels]
    wanted = list(dict.fromkeys(w for w in wanted if w))
    if not wanted:
        return None
    missing = [w for w in wanted if w not in available]
    if missing:
        avail = ", ".join(available) if available else "none"
        raise QSMInputError(
            where,
            f"{what} label(s) {', '.join(missing)} not found in the dataset; available: {avail}",
        )
    return wanted


def find_runs(
    bids_dir: Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
) -> list[Run]:
    """Find every multi-echo GRE run with phase in a BIDS dataset.

    Parameters
    ----------
    bids_dir : Path
        Root of the raw BIDS dataset.
    participant_labels : list of str or None, default None
        Participants to process, with or without the ``sub-`` prefix; ``None`` or empty
        for all.
    session_labels : list of str or None, default None
        Sessions to process, with or without the ``ses-`` prefix; ``None`` or empty for all.

    Returns
    -------
    list of Run
        Sorted by subject, session, acquisition, run and suffix. Echo times are in s,
        the field strength in T.

    Raises
    ------
    QSMInputError
        If ``bids_dir`` is missing or not a BIDS dataset; no phase data is found (or none
        for a requested participant); a participant or session label is not in the
        dataset; an echo lacks ``EchoTime``, has it in ms, or echo times are not strictly
        increasing; both ``MagneticFieldStrength`` and ``ImagingFrequency`` are missing;
        the magnitude echoes do not match the phase echoes; an echo appears twice.
    """
    bids_dir = _check_dataset(bids_dir)
    layout = _make_layout(bids_dir)

    # labels are checked against the folders (a participant without anat/ data is known)
    all_subjects = sorted({p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir()})
    all_sessions = sorted({p.name[4:] for p in bids_dir.glob("sub-*/ses-*") if p.is_dir()})
    subjects = _normalise_labels(participant_labels, "sub-", all_subjects, "participant", bids_dir)
    sessions = _normalise_labels(session_labels, "ses-", all_sessions, "session", bids_dir)

    query: dict[str, Any] = {
        "suffix": list(SUFFIXES),
        "datatype": "anat",
        "extension": [".nii", ".nii.gz"],
    }
    if subjects is not None:
        query["subject"] = subjects
    if sessions is not None:
        query["session"] = sessions
    phase_files = layout.get(part="phase", **query)
    mag_files = layout.get(part="mag", **query)

    if not phase_files:
        raise QSMInputError(
            bids_dir,
            "no multi-echo GRE phase images found: expected "
            "sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_echo-<n>_part-phase"
            "_MEGRE.nii[.gz] (or _T2starw)"
            + (f" for participant(s) {', '.join(subjects)}" if subjects else "")
            + (f" in session(s) {', '.join(sessions)}" if sessions else ""),
        )
    if subjects:
        found = {f.entities["subject"] for f in phase_files}
        lacking = [s for s in subjects if s not in found]
        if lacking:
            raise QSMInputError(
                bids_dir / f"sub-{lacking[0]}",
                f"no MEGRE/T2starw phase images for participant(s) {', '.join(lacking)}",
            )

    groups: dict[tuple, dict[str, list]] = {}
    for part, files in (("phase", phase_files), ("mag", mag_files)):
        for f in files:
            ents = f.get_entities()
            key = tuple(
                (short, str(ents[name])) for name, short in RUN_ENTITIES if name in ents
            ) + (("suffix", ents["suffix"]),)
            groups.setdefault(key, {"phase": [], "mag": []})[part].append(f)

    runs = []
    for key, parts in groups.items():
        if not parts["phase"]:
            continue  # magnitude without phase: not usable for QSM
        runs.append(_build_run(layout, dict(key), parts["phase"], parts["mag"]))
    runs.sort(
        key=lambda r: (
            r.subject,
            r.session or "",
            r.acquisition or "",
            int(r.run) if r.run else -1,
            r.suffix,
            r.name,
        )
    )
    return runs


def _sort_by_echo(files: list, what: str) -> list[tuple[int, Path]]:
    """(echo number, path) sorted by echo; a missing echo entity is allowed for one file."""
    out = []
    for f in files:
        echo = f.get_entities().get("echo")
        out.append((int(echo) if echo is not None else None, Path(f.path)))
    if any(e is None for e, _ in out):
        if len(out) > 1:
            path = next(p for e, p in out if e is None)
            raise QSMInputError(
                path, f"{what} image without an echo-<n> entity in a run with several images"
            )
        return [(1, out[0][1])]
    out.sort()
    for (e1, p1), (e2, p2) in zip(out, out[1:], strict=False):
        if e1 == e2:
            raise QSMInputError(p2, f"echo {e2} appears twice in the run (also {p1.name})")
    return out


def _build_run(layout: Any, key: dict[str, str], phase: list, mag: list) -> Run:
    suffix = key.pop("suffix")
    entities = dict(key)
    phase_sorted = _sort_by_echo(phase, "phase")
    mag_sorted = _sort_by_echo(mag, "magnitude") if mag else []
    warnings: list[str] = []

    if mag_sorted:
        if len(mag_sorted) != len(phase_sorted):
            raise QSMInputError(
                phase_sorted[0][1].parent,
                f"run {'_'.join(f'{k}-{v}' for k, v in entities.items())}_{suffix} has "
                f"{len(phase_sorted)} phase but {len(mag_sorted)} magnitude echoes",
            )
        for (ep, pp), (em, pm) in zip(phase_sorted, mag_sorted, strict=True):
            if ep != em:
                raise QSMInputError(
                    pm, f"magnitude echo {em} does not match phase echo {ep} ({pp.name})"
                )
    else:
        warnings.append(
            "no magnitude images: phase-only processing (masking and echo weighting degraded)"
        )

    echo_times = []
    metas = []
    for i, (_, path) in enumerate(phase_sorted):
        meta = _get_metadata(layout, path)
        if "EchoTime" not in meta and mag_sorted:
            mag_meta = _get_metadata(layout, mag_sorted[i][1])
            if "EchoTime" in mag_meta:
                meta = {**mag_meta, **meta}
                warnings.append(f"EchoTime of {path.name} taken from the magnitude sidecar")
        metas.append(meta)
        echo_times.append(_echo_time(meta, path))
    for (t1, t2), (_, path) in zip(
        zip(echo_times, echo_times[1:], strict=False), phase_sorted[1:], strict=True
    ):
        if not t2 > t1:
            raise QSMInputError(
                path,
                f"echo times are not strictly increasing with echo number "
                f"({', '.join(f'{t:g}' for t in echo_times)} s)",
            )

    first = phase_sorted[0][1]
    meta0 = metas[0]
    if "MagneticFieldStrength" not in meta0 and "ImagingFrequency" not in meta0 and mag_sorted:
        meta0 = {**_get_metadata(layout, mag_sorted[0][1]), **meta0}
    b0, warn = _field_strength(meta0, first)
    if warn:
        warnings.append(warn)

    units = str(meta0.get("Units", "") or "").strip().lower()
    if units not in ("", "rad", "arbitrary"):
        warnings.append(f"phase Units {units!r} is neither 'rad' nor 'arbitrary'; ignored")
        units = ""

    return Run(
        subject=entities["sub"],
        session=entities.get("ses"),
        acquisition=entities.get("acq"),
        run=entities.get("run"),
        suffix=suffix,
        phase_files=tuple(p for _, p in phase_sorted),
        magnitude_files=tuple(p for _, p in mag_sorted),
        echo_times=tuple(echo_times),
        field_strength=float(b0),
        entities=entities,
        warnings=tuple(warnings),
        phase_units=units,
    )


def validate_output_dir(bids_dir: Path, output_dir: Path) -> Path:
    """Refuse an output directory that would write into the raw dataset.

    Parameters
    ----------
    bids_dir : Path
        Root of the raw BIDS dataset.
    output_dir : Path
        Where derivatives will be written (need not exist yet).

    Returns
    -------
    Path
        ``output_dir``, resolved to an absolute path.

    Raises
    ------
    QSMInputError
        If ``output_dir`` is ``bids_dir`` itself, its ``derivatives/`` folder itself, or any
        other folder inside ``bids_dir`` that is not under ``derivatives/`` (use e.g.
        ``<bids_dir>/derivatives/qsm_bids``).
    """
    src = Path(bids_dir).expanduser().resolve()
    out = Path(output_dir).expanduser().resolve()
    if out == src:
        raise QSMInputError(
            output_dir,
            "output directory is the input BIDS dataset; use a separate folder or "
            f"{src / 'derivatives' / 'qsm_bids'}",
        )
    if src in out.parents:
        rel = out.relative_to(src)
        if rel.parts[0] != "derivatives":
            raise QSMInputError(
                output_dir,
                "output directory is inside the input BIDS dataset; only its derivatives/ "
                f"folder may hold outputs (e.g. {src / 'derivatives' / 'qsm_bids'})",
            )
        if len(rel.parts) == 1:
            raise QSMInputError(
                output_dir,
                "output directory is the dataset's derivatives/ folder itself; use a "
                f"pipeline folder inside it, e.g. {src / 'derivatives' / 'qsm_bids'}",
            )
    return out
