"""Find the multi-echo GRE runs of a BIDS dataset and read their metadata.

A run is the set of ``sub-<label>/[ses-<label>/]anat/*_MEGRE`` (or ``_T2starw``) images
that share subject, session, acquisition, run and every other entity except ``echo`` and
``part``. Supported layouts (``.nii`` or ``.nii.gz``; sessions optional):

* one 3D file per echo and part: ``..._echo-<n>_part-phase_MEGRE`` (+ ``part-mag``);
* one 4D file per part holding every echo along the 4th axis, without an ``echo``
  entity: ``..._part-phase_MEGRE`` with a sidecar ``EchoTime`` listing one time per
  volume (a single 3D file without ``echo`` and with one ``EchoTime`` is a single echo);
* real and imaginary parts (``part-real`` + ``part-imag``) instead of magnitude and phase;
  they are converted to magnitude and phase when the run is loaded;
* phase without magnitude (phase-only processing);
* magnitude without a ``part`` entity next to ``part-phase`` images (used, with a note).

Metadata is read through pybids, so sidecars inherited from the subject, session or
dataset level are honoured.

Indexing keeps the input dataset untouched (the pybids database lives in memory), skips
every data type folder other than ``anat/`` and reads metadata only for MEGRE/T2starw
images, so it stays fast on large datasets.

Problems are reported as :class:`~qsm_bids.errors.QSMInputError` naming the offending
file. Problems of the whole dataset (missing, empty or not BIDS, unknown participant or
session label, no phase data at all) always raise; problems of one run (missing or bad
``EchoTime``, no field strength, echoes that do not pair up, ...) raise too, unless
:func:`find_runs` is given an ``invalid`` dict, which then collects them per run so that
the other runs can go on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qsm_bids.core.physics import GAMMA_BAR_MHZ_PER_T
from qsm_bids.errors import QSMInputError

#: Raw suffixes that carry multi-echo GRE phase.
SUFFIXES: tuple[str, ...] = ("MEGRE", "T2starw")

#: ``part`` labels read from the dataset.
PARTS: tuple[str, ...] = ("phase", "mag", "real", "imag")

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
#: Echo times above this (s) are implausible for a gradient echo (T2* of tissue < 0.1 s).
_MAX_PLAUSIBLE_ECHO_TIME_S = 0.25
#: Plausible static field strengths (T).
_FIELD_RANGE_T = (0.05, 25.0)
#: Largest difference (s) accepted between the EchoTime of two parts of one echo.
_ECHO_TIME_ATOL_S = 1e-5
#: Where the field strength can come from, preferred first.
FIELD_STRENGTH_SOURCES: tuple[str, ...] = ("ImagingFrequency", "MagneticFieldStrength")
#: Largest relative difference between ``ImagingFrequency / gamma_bar`` and
#: ``MagneticFieldStrength`` taken as the same field: nominal values are rounded (a
#: Siemens "3 T" is 2.89 T, 3.6 % off; "1.5 T" systems run at 1.43-1.5 T, up to 5 %), so
#: 15 % leaves room for every vendor's rounding while catching a wrong or copied value
#: (3 against 7 T is 57 %, 1.5 against 3 T 50 %).
FIELD_STRENGTH_RTOL = 0.15
#: Start of the run warning (:attr:`Run.warnings`) issued when the two disagree.
FIELD_STRENGTH_MISMATCH = "field strength: ImagingFrequency and MagneticFieldStrength disagree"


@dataclass(frozen=True)
class Run:
    """One multi-echo GRE acquisition: its files and the metadata that QSM needs.

    There is one entry per echo in ``phase_files`` (and ``magnitude_files``): a 4D file
    holding every echo is repeated once per echo, and ``phase_volumes`` (or
    ``magnitude_volumes``) gives the index of each echo along its 4th axis.

    Attributes
    ----------
    subject, session, acquisition, run : str or None
        Entity labels without their ``sub-``/``ses-``/... prefix (``subject`` is always set).
    suffix : str
        ``"MEGRE"`` or ``"T2starw"``.
    phase_files : tuple of Path
        Phase image of each echo, in echo order. For ``parts == "real-imag"``: the real
        part of each echo.
    magnitude_files : tuple of Path
        Magnitude image of each echo in the same order, or empty for phase-only data. For
        ``parts == "real-imag"``: the imaginary part of each echo.
    echo_times : tuple of float
        Echo times in s, strictly increasing.
    field_strength : float
        Static field strength in T: ``ImagingFrequency / 42.57747892`` when the sidecar
        has ``ImagingFrequency`` (MHz), else the nominal ``MagneticFieldStrength`` (see
        :func:`field_strength_from_metadata`).
    entities : dict
        Every identifying entity, ``{BIDS key: label}`` in BIDS filename order
        (``{"sub": "01", "ses": "A", "acq": "x", "run": "1"}``); used to name derivatives.
    warnings : tuple of str
        Things the user should know (e.g. field strength derived from ImagingFrequency).
    phase_units : str
        The phase sidecar's ``Units`` (lower case), or ``""`` when absent.
    phase_volumes : tuple of int, default ()
        For a 4D phase (or real) file: the 0-based index of each echo along its 4th axis
        (one per echo). Empty when every file holds one 3D echo.
    t1w : Path or None, default None
        A T1-weighted image of the same subject and session (the first in name order),
        used to guide the registration to the template.
    magnitude_volumes : tuple of int, default ()
        The same for the magnitude (or imaginary) files.
    parts : str, default "mag-phase"
        ``"mag-phase"`` or ``"real-imag"`` (complex data stored as real and imaginary parts,
        converted to magnitude and phase by :func:`qsm_bids.bids.load.load_run`).
    field_strength_source : str, default ""
        The sidecar key ``field_strength`` was taken from: ``"ImagingFrequency"`` or
        ``"MagneticFieldStrength"`` (:data:`FIELD_STRENGTH_SOURCES`); ``""`` for a run
        built by hand without saying.
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
    phase_volumes: tuple[int, ...] = ()
    magnitude_volumes: tuple[int, ...] = ()
    parts: str = "mag-phase"
    t1w: Path | None = None
    field_strength_source: str = ""

    def __post_init__(self) -> None:
        # lists (e.g. from a JSON round trip) become tuples: the run stays hashable
        conv = {
            "phase_files": lambda v: tuple(Path(p) for p in v),
            "magnitude_files": lambda v: tuple(Path(p) for p in v),
            "echo_times": lambda v: tuple(float(t) for t in v),
            "warnings": lambda v: tuple(str(w) for w in v),
            "phase_volumes": lambda v: tuple(int(i) for i in v),
            "magnitude_volumes": lambda v: tuple(int(i) for i in v),
        }
        for name, fn in conv.items():
            object.__setattr__(self, name, fn(getattr(self, name)))
        if self.t1w is not None:
            object.__setattr__(self, "t1w", Path(self.t1w))
        if self.parts not in ("mag-phase", "real-imag"):
            raise ValueError(f"Run.parts must be 'mag-phase' or 'real-imag', not {self.parts!r}")
        if self.field_strength_source not in ("", *FIELD_STRENGTH_SOURCES):
            raise ValueError(
                f"Run.field_strength_source must be one of {FIELD_STRENGTH_SOURCES} or '', "
                f"not {self.field_strength_source!r}"
            )

    @property
    def name(self) -> str:
        """The run's entities as a filename prefix, e.g. ``"sub-01_ses-A_acq-x_run-1"``."""
        ents = self.entities or _fallback_entities(self)
        return "_".join(f"{k}-{v}" for k, v in ents.items())

    @property
    def has_magnitude(self) -> bool:
        """Whether magnitude images are available (or computed from real/imaginary parts)."""
        return bool(self.magnitude_files)

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return len(self.echo_times)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every distinct input image of the run, phase (or real) first."""
        return tuple(dict.fromkeys((*self.phase_files, *self.magnitude_files)))


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


def _bad_sidecars(bids_dir: Path) -> dict[Path, str]:
    """MEGRE/T2starw JSON sidecars (at the dataset, subject, session or anat level) that
    are not valid JSON objects: {path: problem}."""
    patterns = ("*.json", "sub-*/*.json", "sub-*/ses-*/*.json")
    patterns += ("sub-*/anat/*.json", "sub-*/ses-*/anat/*.json")
    bad = {}
    for pattern in patterns:
        for path in bids_dir.glob(pattern):
            if not path.name.endswith(tuple(f"{s}.json" for s in SUFFIXES)):
                continue
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                bad[path] = f"cannot read the JSON sidecar: {type(exc).__name__}: {exc}"
                continue
            if not isinstance(value, dict):
                bad[path] = "the JSON sidecar is not a JSON object ({...})"
    return bad


def _make_layout(bids_dir: Path, exclude: Iterable[Path] = ()) -> Any:
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
    ignore += [
        re.compile("^/" + re.escape(p.relative_to(bids_dir).as_posix()) + "$") for p in exclude
    ]
    # metadata is indexed only for the files passed as filters to the indexer
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, suffix=list(SUFFIXES))
    try:
        return bids.BIDSLayout(str(bids_dir), validate=False, derivatives=False, indexer=indexer)
    except Exception as exc:  # pybids raises assorted errors on malformed datasets
        raise QSMInputError(bids_dir, f"pybids cannot index the dataset: {exc}") from exc


def _index(bids_dir: Path) -> tuple[Any, dict[Path, str]]:
    """(pybids layout, {unreadable sidecar: problem}); unreadable sidecars are left out of
    the index so that only the runs they apply to fail."""
    try:
        return _make_layout(bids_dir), {}
    except QSMInputError:
        bad = _bad_sidecars(bids_dir)
        if not bad:
            raise
    return _make_layout(bids_dir, bad), bad


def _name_entities(name: str) -> tuple[set[str], str]:
    """({"key-value", ...}, suffix) of a BIDS file name."""
    stem = name.split(".")[0]
    *pairs, suffix = stem.split("_")
    return set(pairs), suffix


def _sidecar_applies(sidecar: Path, image: Path) -> bool:
    """Whether ``sidecar`` is one of the JSON files that the inheritance principle applies
    to ``image`` (same suffix, a subset of its entities, in the same or a parent folder)."""
    if sidecar.parent not in (image.parent, *image.parents):
        return False
    s_ents, s_suffix = _name_entities(sidecar.name)
    i_ents, i_suffix = _name_entities(image.name)
    return s_suffix == i_suffix and s_ents <= i_ents


def _get_metadata(layout: Any, path: Path) -> dict:
    try:
        return dict(layout.get_metadata(str(path)))
    except Exception as exc:  # e.g. a sidecar that is not valid JSON
        raise QSMInputError(path, f"cannot read the JSON sidecar metadata: {exc}") from exc


def _run_name(entities: Mapping[str, str]) -> str:
    return "_".join(f"{k}-{v}" for k, v in entities.items())


def _echo_time_value(value: Any, path: Path) -> float:
    """One echo time (s) from a sidecar value, with clear errors for likely mistakes."""
    try:
        te = float(value)
    except (TypeError, ValueError):
        raise QSMInputError(path, f"EchoTime {value!r} is not a number") from None
    if te != te or te in (float("inf"), float("-inf")):
        raise QSMInputError(path, f"EchoTime {value!r} is not a finite number")
    if not te > 0:
        raise QSMInputError(path, f"EchoTime {value} must be positive (in seconds)")
    if te > _MAX_ECHO_TIME_S:
        raise QSMInputError(
            path,
            f"EchoTime {te:g} looks like milliseconds; BIDS requires seconds "
            f"({te:g} ms = {te / 1000:g} s: write {te / 1000:g} in the JSON sidecar)",
        )
    if te > _MAX_PLAUSIBLE_ECHO_TIME_S:
        raise QSMInputError(
            path,
            f"EchoTime {te:g} s is implausibly long for a gradient echo (more than "
            f"{_MAX_PLAUSIBLE_ECHO_TIME_S:g} s); if it is in milliseconds write {te / 1000:g}",
        )
    return te


def _missing_echo_time(path: Path) -> QSMInputError:
    return QSMInputError(
        path,
        "missing EchoTime (s) in its JSON sidecar (or an inherited one); it is required for MEGRE",
    )


def _echo_time(meta: Mapping[str, Any], path: Path) -> float:
    """The single echo time (s) of a file that holds one echo."""
    value = meta.get("EchoTime")
    if value is None:
        raise _missing_echo_time(path)
    if isinstance(value, list):
        if len(value) != 1:
            raise QSMInputError(
                path,
                f"EchoTime is a list {value} but the file has an echo-<n> entity (one echo); "
                "expected one number",
            )
        value = value[0]
    return _echo_time_value(value, path)


def _echo_time_list(meta: Mapping[str, Any], path: Path) -> tuple[float, ...]:
    """Echo times (s) of a file without an ``echo`` entity: one number or a list (4D)."""
    value = meta.get("EchoTime")
    if value is None:
        raise _missing_echo_time(path)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise QSMInputError(path, "EchoTime is an empty list")
    return tuple(_echo_time_value(v, path) for v in values)


def _check_increasing(echo_times: list[float] | tuple[float, ...], paths: list[Path]) -> None:
    for i in range(1, len(echo_times)):
        if not echo_times[i] > echo_times[i - 1]:
            raise QSMInputError(
                paths[i],
                f"echo times are not strictly increasing with echo number "
                f"({', '.join(f'{t:g}' for t in echo_times)} s)",
            )


def _sidecar_number(meta: Mapping[str, Any], key: str, path: Path) -> float | None:
    """``meta[key]`` as a float, None when absent; a non-number raises naming ``path``."""
    value = meta.get(key)
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise QSMInputError(path, f"{key} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise QSMInputError(path, f"{key} {value!r} is not a number")
    return out


def field_strength_from_metadata(
    meta: Mapping[str, Any], path: Path
) -> tuple[float, str, str | None]:
    """The static field B0 (T) of a run from its sidecar metadata.

    ``MagneticFieldStrength`` is the scanner's *nominal* field (3 for a Siemens "3 T" that
    runs at 123.2 MHz, i.e. 2.89 T); every map converted with it is off by the same
    factor (3.6 % there). The proton frequency the scanner was tuned to,
    ``ImagingFrequency`` (MHz; written by dcm2niix, not part of the BIDS schema), gives the
    true field: ``B0 = ImagingFrequency / gamma_bar`` with ``gamma_bar = 42.57747892``
    MHz/T. The rule:

    1. ``ImagingFrequency`` present: B0 from it. It must give a plausible field
       (0.05-25 T), else the run is an error. When ``MagneticFieldStrength`` is present
       too and the two differ by more than :data:`FIELD_STRENGTH_RTOL` (15 %, more than
       any vendor's rounding), ``ImagingFrequency`` is still used, because it is the
       measured per-acquisition value while a nominal value is often inherited or copied
       from another sidecar, but a warning (starting with
       :data:`FIELD_STRENGTH_MISMATCH`) names the file and both values.
    2. Else ``MagneticFieldStrength``, if plausible (0.05-25 T), else an error.
    3. Neither: an error (the field cannot be converted to ppm).

    A value that is present but not a number is an error in every case.

    Parameters
    ----------
    meta : mapping
        The image's merged sidecar metadata (inherited levels included).
    path : Path
        The image the metadata belongs to (named in errors and warnings).

    Returns
    -------
    b0 : float
        Field strength (T).
    source : str
        ``"ImagingFrequency"`` or ``"MagneticFieldStrength"``.
    warning : str or None
        The disagreement warning, or None.

    Raises
    ------
    QSMInputError
        Neither key is present, a value is not a number, or the field it gives is
        implausible.
    """
    lo, hi = _FIELD_RANGE_T
    nominal = _sidecar_number(meta, "MagneticFieldStrength", path)
    freq = _sidecar_number(meta, "ImagingFrequency", path)
    if nominal is not None and not lo <= nominal <= hi:
        raise QSMInputError(
            path, f"MagneticFieldStrength {nominal:g} is not a plausible field strength in T"
        )
    if freq is not None:
        b0 = freq / GAMMA_BAR_MHZ_PER_T
        if not lo <= b0 <= hi:
            raise QSMInputError(
                path,
                f"ImagingFrequency {freq:g} is not a plausible proton frequency in MHz "
                f"(it gives {b0:g} T)",
            )
        warning = None
        if nominal is not None and abs(b0 / nominal - 1.0) > FIELD_STRENGTH_RTOL:
            warning = (
                f"{FIELD_STRENGTH_MISMATCH} in the sidecar(s) of {Path(path).name}: "
                f"ImagingFrequency {freq:g} MHz gives {b0:.4f} T but MagneticFieldStrength "
                f"is {nominal:g} T ({100 * abs(b0 / nominal - 1):.0f} % apart, more than "
                f"{100 * FIELD_STRENGTH_RTOL:.0f} %); using ImagingFrequency, check the "
                "sidecars"
            )
        return b0, "ImagingFrequency", warning
    if nominal is not None:
        return nominal, "MagneticFieldStrength", None
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


#: ``--bids-filter-file`` queries (fMRIPrep's format) and the suffix each one selects
FILTER_QUERIES: dict[str, str] = {"megre": "MEGRE", "t2starw": "T2starw", "t1w": "T1w"}

#: pybids entities a filter may use (``part`` and the suffix are the app's to choose)
FILTER_ENTITIES: tuple[str, ...] = (*(name for name, _ in RUN_ENTITIES), "echo")


def check_bids_filters(filters: Any, source: Path | str | None) -> dict[str, dict[str, Any]]:
    """Check BIDS filters in fMRIPrep's ``--bids-filter-file`` format.

    ``{"megre": {...}, "t2starw": {...}, "t1w": {...}}``: per query, pybids entities
    (``"acquisition"``, ``"session"``, ``"run"``, ...) with a label, a number, a list of
    them, ``null`` (the entity must be absent) or ``"*"`` (it must be present).

    Returns
    -------
    dict
        The filters, unchanged (a plain copy).

    Raises
    ------
    QSMInputError
        An unknown query or entity, or a value of another kind, naming ``source``.
    """
    if not isinstance(filters, dict):
        raise QSMInputError(source, "BIDS filters must be a JSON object {query: {entity: value}}")
    out = {}
    for query, entities in filters.items():
        if query not in FILTER_QUERIES:
            raise QSMInputError(
                source,
                f"unknown BIDS filter query {query!r}; the queries are {', '.join(FILTER_QUERIES)}",
            )
        if not isinstance(entities, dict):
            raise QSMInputError(source, f"BIDS filter {query!r} must be an object of entities")
        for name, value in entities.items():
            if name not in FILTER_ENTITIES:
                raise QSMInputError(
                    source,
                    f"BIDS filter {query!r}: unknown entity {name!r}; use pybids names: "
                    f"{', '.join(FILTER_ENTITIES)}",
                )
            items = value if isinstance(value, list) else [value]
            if not items or not all(
                v is None or (isinstance(v, str | int) and not isinstance(v, bool)) for v in items
            ):
                raise QSMInputError(
                    source,
                    f"BIDS filter {query!r}: {name} = {value!r} is not a label, a number, a "
                    "list of them, null or '*'",
                )
        out[query] = dict(entities)
    return out


def load_bids_filters(path: Path) -> dict[str, dict[str, Any]]:
    """Read and check a ``--bids-filter-file`` (see :func:`check_bids_filters`).

    Raises
    ------
    QSMInputError
        The file is missing, not JSON or not a valid filter, naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise QSMInputError(path, "--bids-filter-file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QSMInputError(path, f"--bids-filter-file is not valid JSON: {exc}") from exc
    return check_bids_filters(data, path)


def _pybids_filter(entities: Mapping[str, Any]) -> dict[str, Any]:
    """A filter as pybids query arguments: ``null`` -> ``Query.NONE``, ``"*"`` ->
    ``Query.ANY``."""
    from bids.layout import Query

    def one(value: Any) -> Any:
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.ANY
        return value

    return {
        name: [one(v) for v in value] if isinstance(value, list) else one(value)
        for name, value in entities.items()
    }


def _merge_labels(query: dict[str, Any], name: str, value: Any) -> None:
    """Add a filter's ``subject``/``session`` to a query that may already select labels
    (``--participant-label``): the intersection of both."""
    if name not in query or not isinstance(value, str | int | list):
        query[name] = value
        return
    wanted = {str(v) for v in (value if isinstance(value, list) else [value])}
    query[name] = [v for v in query[name] if v in wanted]


def _t1w_matching(layout: Any, run: Run, entities: Mapping[str, Any]) -> Path | None:
    """The first ``T1w`` image of the run's subject and session that matches the ``t1w``
    filter, or ``None``."""
    from bids.layout import Query

    query = {**_pybids_filter(entities), "subject": run.subject}
    query["session"] = run.session if run.session is not None else Query.NONE
    hits = layout.get(
        suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"], return_type="file", **query
    )
    return Path(sorted(hits)[0]) if hits else None


def find_runs(
    bids_dir: Path,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    *,
    invalid: dict[str, str] | None = None,
    bids_filters: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Run]:
    """Find every multi-echo GRE run with phase (or real and imaginary parts) in a dataset.

    Parameters
    ----------
    bids_dir : Path
        Root of the raw BIDS dataset.
    participant_labels : list of str or None, default None
        Participants to process, with or without the ``sub-`` prefix; ``None`` or empty
        for all.
    session_labels : list of str or None, default None
        Sessions to process, with or without the ``ses-`` prefix; ``None`` or empty for all.
    invalid : dict or None, default None
        ``None``: a problem with any run raises. A dict: a run with a problem (see Raises)
        is left out and recorded as ``invalid[run name] = "<file>: <problem>"`` (a
        requested participant without GRE data as ``invalid["sub-<label>"]``), so that
        the other runs can go on. Dataset-level problems raise in both cases.
    bids_filters : dict or None, default None
        ``--bids-filter-file`` (fMRIPrep's format, :func:`check_bids_filters`): pybids
        entities per query; ``megre``/``t2starw`` narrow the GRE images, ``t1w`` the
        T1-weighted image used to guide the registration.

    Returns
    -------
    list of Run
        The valid runs, sorted by subject, session, acquisition, run and suffix. Echo times
        are in s, the field strength in T.

    Raises
    ------
    QSMInputError
        Dataset level (always): ``bids_dir`` is missing, empty or not a BIDS dataset; no
        phase data is found (or none for any requested participant); a participant or
        session label is not in the dataset. Run level (only when ``invalid`` is
        ``None``): a requested participant has no GRE data; an echo lacks ``EchoTime``,
        has a negative one or one in ms, or echo times are not strictly increasing; a 4D
        file's ``EchoTime`` list differs between parts; both ``MagneticFieldStrength``
        and ``ImagingFrequency`` are missing; the magnitude echoes do not match the phase
        echoes; an echo appears twice; a ``part-real`` image has no ``part-imag`` partner.
    """
    from bids.layout import Query

    bids_dir = _check_dataset(bids_dir)
    layout, bad_sidecars = _index(bids_dir)

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
    filters = check_bids_filters(dict(bids_filters or {}), "--bids-filter-file")
    found_files = []
    for suffix in SUFFIXES:
        q = {**query, "suffix": suffix}
        for name, value in _pybids_filter(filters.get(suffix.lower(), {})).items():
            _merge_labels(q, name, value)
        found_files += layout.get(part=list(PARTS), **q)
        found_files += layout.get(part=Query.NONE, **q)

    groups: dict[tuple, dict[str, list]] = {}
    for f in found_files:
        ents = f.get_entities()
        key = tuple((short, str(ents[name])) for name, short in RUN_ENTITIES if name in ents) + (
            ("suffix", ents["suffix"]),
        )
        parts = groups.setdefault(key, {p: [] for p in (*PARTS, "none")})
        parts[str(ents.get("part", "none"))].append(f)
    # magnitude-only groups are not usable for QSM
    groups = {k: v for k, v in groups.items() if v["phase"] or v["real"] or v["imag"]}

    if not groups:
        raise QSMInputError(
            bids_dir,
            "no multi-echo GRE phase images found: expected "
            "sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_echo-<n>_part-phase"
            "_MEGRE.nii[.gz] (or _T2starw, or one 4D _part-phase_MEGRE file, or "
            "part-real/part-imag)"
            + (f" for participant(s) {', '.join(subjects)}" if subjects else "")
            + (f" in session(s) {', '.join(sessions)}" if sessions else "")
            + (f" matching the BIDS filters {json.dumps(filters)}" if filters else ""),
        )
    if subjects:
        found = {dict(k)["sub"] for k in groups}
        lacking = [s for s in subjects if s not in found]
        if lacking:
            err = QSMInputError(
                bids_dir / f"sub-{lacking[0]}",
                f"no MEGRE/T2starw phase images for participant(s) {', '.join(lacking)}",
            )
            if invalid is None:
                raise err
            for s in lacking:
                invalid[f"sub-{s}"] = str(
                    QSMInputError(bids_dir / f"sub-{s}", "no MEGRE/T2starw phase images")
                )

    runs = []
    for key in sorted(groups):
        try:
            images = [Path(f.path) for files in groups[key].values() for f in files]
            for side, problem in bad_sidecars.items():
                user = next((im for im in images if _sidecar_applies(side, im)), None)
                if user is not None:
                    raise QSMInputError(side, f"{problem} (it applies to {user.name})")
            runs.append(_build_run(layout, dict(key), groups[key]))
        except QSMInputError as exc:
            if invalid is None:
                raise
            ents = {k: v for k, v in key if k != "suffix"}
            invalid[_run_name(ents)] = str(exc)
    if "t1w" in filters:
        runs = [replace(r, t1w=_t1w_matching(layout, r, filters["t1w"])) for r in runs]
    runs.sort(
        key=lambda r: (
            r.subject,
            r.session or "",
            r.acquisition or "",
            int(r.run) if r.run and r.run.isdigit() else -1,
            r.suffix,
            r.name,
        )
    )
    return runs


def _sort_by_echo(files: list, what: str) -> list[tuple[int | None, Path]]:
    """(echo number, path) sorted by echo; one file without an echo entity gives
    ``[(None, path)]`` (a single echo or a 4D file of every echo)."""
    out = []
    for f in files:
        echo = f.get_entities().get("echo")
        out.append((int(echo) if echo is not None else None, Path(f.path)))
    if any(e is None for e, _ in out):
        if len(out) > 1:
            path = next(p for e, p in out if e is None)
            others = [p.name for e, p in out if p != path]
            raise QSMInputError(
                path,
                f"{what} image without an echo-<n> entity in a run with several {what} "
                f"images ({', '.join(others)}); use either one file per echo with echo-<n> "
                "or one 4D file of every echo without it",
            )
        return [(None, out[0][1])]
    out.sort()
    for (e1, p1), (e2, p2) in zip(out, out[1:], strict=False):
        if e1 == e2:
            raise QSMInputError(p2, f"echo {e2} appears twice in the run (also {p1.name})")
    return out


@dataclass
class _Part:
    """The echoes of one part of a run: files, 4D volume indices and echo numbers."""

    files: list[Path]
    volumes: list[int]  # empty: one 3D file per echo
    numbers: list[int]  # echo numbers (1..n for a 4D file)
    stacked: bool  # one file without an echo entity


def _build_run(layout: Any, key: dict[str, str], parts: dict[str, list]) -> Run:
    suffix = key.pop("suffix")
    entities = dict(key)
    name = f"{_run_name(entities)}_{suffix}"
    warnings: list[str] = []

    if parts["phase"]:
        kind, pname, sname = "mag-phase", "phase", "magnitude"
        primary, secondary = parts["phase"], parts["mag"]
        if not secondary and parts["none"]:
            secondary = parts["none"]
            warnings.append(
                "magnitude taken from the images without a part- entity "
                f"({Path(secondary[0].path).name}, ...); BIDS names them part-mag"
            )
        if parts["real"] or parts["imag"]:
            warnings.append("part-real/part-imag images ignored: part-mag/part-phase are used")
    else:
        kind, pname, sname = "real-imag", "real", "imaginary"
        if not parts["real"] or not parts["imag"]:
            have, lack = ("real", "imag") if parts["real"] else ("imag", "real")
            raise QSMInputError(
                Path(parts[have][0].path),
                f"part-{have} image without part-{lack} images (and no part-phase): the "
                "complex signal needs both the real and the imaginary part",
            )
        primary, secondary = parts["real"], parts["imag"]
        warnings.append(
            "real and imaginary images: magnitude and phase are computed from them at load"
        )

    p_sorted = _sort_by_echo(primary, pname)
    s_sorted = _sort_by_echo(secondary, sname) if secondary else []

    # echo times of the primary part (phase or real), with the other part as a fallback
    metas: list[dict] = []
    echo_times: list[float]
    if p_sorted[0][0] is None:
        path = p_sorted[0][1]
        meta = _get_metadata(layout, path)
        if "EchoTime" not in meta and s_sorted:
            other = _get_metadata(layout, s_sorted[0][1])
            if "EchoTime" in other:
                meta = {**meta, "EchoTime": other["EchoTime"]}
                warnings.append(_twin_warning("EchoTime", path, s_sorted[0][1], sname))
        echo_times = list(_echo_time_list(meta, path))
        n = len(echo_times)
        prim = _Part([path] * n, list(range(n)) if n > 1 else [], list(range(1, n + 1)), True)
        metas.append(meta)
        _check_increasing(echo_times, [path] * n)
    else:
        echo_times = []
        paths = [p for _, p in p_sorted]
        for i, path in enumerate(paths):
            meta = _get_metadata(layout, path)
            if "EchoTime" not in meta and len(s_sorted) == len(p_sorted):
                other = _get_metadata(layout, s_sorted[i][1])
                if "EchoTime" in other:
                    meta = {**meta, "EchoTime": other["EchoTime"]}
                    warnings.append(_twin_warning("EchoTime", path, s_sorted[i][1], sname))
            metas.append(meta)
            echo_times.append(_echo_time(meta, path))
        n = len(paths)
        prim = _Part(paths, [], [e for e, _ in p_sorted], False)
        _check_increasing(echo_times, paths)

    sec = _Part([], [], [], False)
    if s_sorted:
        sec = _secondary_part(layout, s_sorted, prim, echo_times, name, pname, sname, warnings)
    elif kind == "mag-phase":
        warnings.append(
            "no magnitude images: phase-only processing (masking and echo weighting degraded)"
        )

    first = prim.files[0]
    meta0 = metas[0]
    if ("MagneticFieldStrength" not in meta0 or "ImagingFrequency" not in meta0) and sec.files:
        other = _get_metadata(layout, sec.files[0])
        for key in ("MagneticFieldStrength", "ImagingFrequency"):
            if key not in meta0 and key in other:
                meta0 = {**meta0, key: other[key]}
                warnings.append(_twin_warning(key, first, sec.files[0], sname))
    b0, b0_source, warn = field_strength_from_metadata(meta0, first)
    if warn:
        warnings.append(warn)

    units = str(meta0.get("Units", "") or "").strip().lower() if kind == "mag-phase" else ""
    if units not in ("", "rad", "arbitrary"):
        warnings.append(f"phase Units {units!r} is neither 'rad' nor 'arbitrary'; ignored")
        units = ""

    return Run(
        subject=entities["sub"],
        session=entities.get("ses"),
        acquisition=entities.get("acq"),
        run=entities.get("run"),
        suffix=suffix,
        phase_files=tuple(prim.files),
        magnitude_files=tuple(sec.files),
        echo_times=tuple(echo_times),
        field_strength=float(b0),
        entities=entities,
        warnings=tuple(warnings),
        phase_units=units,
        phase_volumes=tuple(prim.volumes),
        magnitude_volumes=tuple(sec.volumes),
        parts=kind,
        t1w=_find_t1w(first, entities),
        field_strength_source=b0_source,
    )


def _find_t1w(gre_file: Path, entities: dict) -> Path | None:
    """The first ``*_T1w.nii[.gz]`` beside the run's files (same subject and session)."""
    folder = Path(gre_file).parent
    prefix = f"sub-{entities['sub']}" + (f"_ses-{entities['ses']}" if "ses" in entities else "")
    hits = sorted(
        p
        for p in folder.glob(f"{prefix}_*T1w.nii*")
        if p.name.endswith(("_T1w.nii", "_T1w.nii.gz"))
    )
    return hits[0] if hits else None


def _twin_warning(key: str, lacking: Path, twin: Path, twin_part: str) -> str:
    """Run warning: ``key`` of ``lacking``'s sidecar was completed from its ``twin`` (the other
    part of the same echo), naming both files."""
    return (
        f"{key} missing from the sidecar of {Path(lacking).name}: taken from its "
        f"{twin_part} twin {Path(twin).name}"
    )


def _secondary_part(
    layout: Any,
    s_sorted: list[tuple[int | None, Path]],
    prim: _Part,
    echo_times: list[float],
    name: str,
    pname: str,
    sname: str,
    warnings: list[str],
) -> _Part:
    """The magnitude (or imaginary) echoes, matched to the phase (or real) echoes.

    A magnitude (imaginary) sidecar without ``EchoTime`` takes the phase (real) echo's; each
    such file is named in a warning appended to ``warnings`` (with the twin it came from).
    """
    n = len(echo_times)
    if s_sorted[0][0] is None:  # one file: a single echo or a 4D file of every echo
        path = s_sorted[0][1]
        meta = _get_metadata(layout, path)
        if "EchoTime" not in meta and (n == 1 or prim.stacked):
            warnings.append(_twin_warning("EchoTime", path, prim.files[0], pname))
        if "EchoTime" in meta:
            tes = _echo_time_list(meta, path)
            if len(tes) != n or any(
                abs(a - b) > _ECHO_TIME_ATOL_S for a, b in zip(tes, echo_times, strict=False)
            ):
                raise QSMInputError(
                    path,
                    f"EchoTime {', '.join(f'{t:g}' for t in tes)} s differs from the "
                    f"{pname} echo times {', '.join(f'{t:g}' for t in echo_times)} s "
                    f"({prim.files[0].name})",
                )
        elif n > 1 and not prim.stacked:
            raise QSMInputError(
                path,
                f"{sname} image without an echo-<n> entity and without an EchoTime list, "
                f"but the {pname} images have {n} echoes",
            )
        return _Part([path] * n, list(range(n)) if n > 1 else [], list(range(1, n + 1)), True)

    paths = [p for _, p in s_sorted]
    numbers = [e for e, _ in s_sorted]
    if len(paths) != n:
        raise QSMInputError(
            prim.files[0].parent,
            f"run {name} has {n} {pname} but {len(paths)} {sname} echoes",
        )
    if not prim.stacked:
        for ep, pp, em, pm in zip(prim.numbers, prim.files, numbers, paths, strict=True):
            if ep != em:
                raise QSMInputError(
                    pm, f"{sname} echo {em} does not match {pname} echo {ep} ({pp.name})"
                )
    for te, path, twin in zip(echo_times, paths, prim.files, strict=True):
        meta = _get_metadata(layout, path)
        if "EchoTime" not in meta:
            warnings.append(_twin_warning("EchoTime", path, twin, pname))
        else:
            te_s = _echo_time(meta, path)
            if abs(te_s - te) > _ECHO_TIME_ATOL_S:
                raise QSMInputError(
                    path,
                    f"EchoTime {te_s:g} s differs from {te:g} s of the matching {pname} echo",
                )
    return _Part(paths, [], numbers, False)


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
