"""User-supplied segmentations (``--segmentation``) for the regional statistics.

A segmentation is an integer label image in the subject's *scanner* space (for example
FreeSurfer's ``aseg`` or a manual segmentation drawn on the same session's T1w). It is brought
onto each run's GRE grid by world coordinates (nearest neighbour, no registration) and gives
a ``<prefix>_desc-<name>_regionstats.tsv`` beside the AAL3 one.

Where it comes from (:func:`find_segmentations`):

* a BIDS derivatives folder: ``sub-<label>/[ses-<label>/]anat/*_dseg.nii[.gz]`` of the run's
  subject and session (files whose ``space-`` names a template, e.g. ``MNI152...``, are
  ignored); when several match, the one with the run's ``acq-``/``run-`` entities, or the one
  named by ``--segmentation-name`` (its ``seg-``/``atlas-``/``desc-`` label), is used. Region
  names come from a ``*_dseg.tsv`` (BIDS columns ``index`` and ``name``) next to the image or,
  following BIDS inheritance, higher up (e.g. ``dseg.tsv`` at the folder root);
* a single image file: only when the participant level processes one subject and session;
  its names from ``<same name>.tsv`` or ``dseg.tsv`` in the same folder.

Labels present in the image but missing from the table (or every label, without a table) are
reported as ``label_<n>`` with a warning, so that no labelled voxel is silently dropped;
entries of the table that the image does not use are ignored. Every problem is a
:class:`~qsm_bids.errors.QSMInputError` naming the file or folder, raised before any heavy
work.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids.bids.layout import Run
from qsm_bids.errors import QSMInputError

#: Name of the segmentation when its file name carries no ``seg-``/``atlas-``/``desc-``.
DEFAULT_NAME = "custom"
#: Names that the built-in atlas uses (``desc-aal3``): a user segmentation may not take them.
RESERVED_NAMES = ("aal3",)
#: Entities that name a segmentation, in order of preference.
NAME_ENTITIES = ("seg", "atlas", "desc")
#: ``space-`` labels of template spaces: such files are not in the subject's scanner space.
_TEMPLATE_SPACE = re.compile(
    r"^(MNI|ICBM|fsaverage|fsLR|fsnative|Talairach|OASIS|NKI|UNCInfant|tpl|Fischer|MNIPediatric)",
    re.IGNORECASE,
)
_NAME = re.compile(r"^[a-zA-Z0-9]+$")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii")
#: Labels listed by name in a warning before "...".
_SHOW = 10


@dataclass(frozen=True)
class Segmentation:
    """A user segmentation for one run.

    Attributes
    ----------
    path : Path
        The label image (subject scanner space).
    name : str
        ``desc-`` label of its derivatives (alphanumeric).
    names : dict[int, str]
        Label -> region name, for every label present in the image (after
        :func:`check_segmentation`; before it, the table's entries).
    labels_file : Path or None
        The ``dseg.tsv`` the names come from, ``None`` when there is none.
    warnings : tuple of str
        Things the user should know (unnamed labels, labels outside the GRE field of view).
    """

    path: Path
    name: str
    names: dict[int, str]
    labels_file: Path | None = None
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def _split_name(filename: str) -> tuple[dict[str, str], str] | None:
    """Entities and suffix of a BIDS file name (``None`` when it is not of that form)."""
    ext = next((e for e in (*_IMAGE_EXTENSIONS, ".tsv") if filename.endswith(e)), None)
    stem = filename[: -len(ext)] if ext else filename.split(".")[0]
    parts = stem.split("_")
    ents: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            return None
        ents[key] = value
    return ents, parts[-1]


def validate_segmentation_name(name: str) -> str:
    """Check a segmentation name (``--segmentation-name``): alphanumeric, not ``aal3``.

    Parameters
    ----------
    name : str
        The ``desc-`` label of the segmentation's derivatives.

    Returns
    -------
    str
        ``name`` unchanged.

    Raises
    ------
    QSMInputError
        If it is empty, has characters other than letters and digits, or is reserved.
    """
    if not _NAME.match(name or ""):
        raise QSMInputError(
            None,
            f"--segmentation-name {name!r}: use letters and digits only (it becomes the "
            "desc- label of the outputs, e.g. desc-aseg)",
        )
    if name.lower() in RESERVED_NAMES:
        raise QSMInputError(
            None,
            f"--segmentation-name {name!r} is the built-in atlas's name; choose another one",
        )
    return name


def segmentation_name(path: str | Path) -> str:
    """The name of a segmentation file: its ``seg-``, ``atlas-`` or ``desc-`` label (the
    first present, if alphanumeric and not reserved), else :data:`DEFAULT_NAME`.

    Parameters
    ----------
    path : path-like
        The label image, e.g. ``sub-01_desc-aseg_dseg.nii.gz`` (-> ``"aseg"``).

    Returns
    -------
    str
    """
    parsed = _split_name(Path(path).name)
    if parsed is not None:
        for key in NAME_ENTITIES:
            value = parsed[0].get(key)
            if value and _NAME.match(value) and value.lower() not in RESERVED_NAMES:
                return value
    return DEFAULT_NAME


# --------------------------------------------------------------------------------------
# The label table
# --------------------------------------------------------------------------------------


def read_dseg_tsv(path: str | Path) -> dict[int, str]:
    """Region names of a BIDS ``dseg.tsv`` (columns ``index`` and ``name``; others ignored).

    Parameters
    ----------
    path : path-like
        The table.

    Returns
    -------
    dict[int, str]
        Label -> name for every positive index (index 0, the background, is dropped).

    Raises
    ------
    QSMInputError
        If the file cannot be read, lacks the ``index`` or ``name`` column, or has an index
        that is not a non-negative integer or appears twice.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QSMInputError(path, f"cannot read the label table ({exc})") from exc
    for col in ("index", "name"):
        if col not in columns:
            raise QSMInputError(
                path, f"label table has no {col!r} column (BIDS dseg.tsv: index, name)"
            )
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        text = (row.get("index") or "").strip()
        try:
            index = int(text)
        except ValueError:
            index = -1
        if index < 0:
            raise QSMInputError(path, f"line {line}: index {text!r} is not a non-negative integer")
        if index in names:
            raise QSMInputError(path, f"line {line}: index {index} appears twice")
        names[index] = (row.get("name") or "").strip()
    names.pop(0, None)
    return names


def find_labels_file(image: str | Path, root: str | Path | None = None) -> Path | None:
    """The ``dseg.tsv`` that names the labels of ``image``, following BIDS inheritance.

    Looks in the image's folder and, when ``root`` (a derivatives folder holding it) is given,
    in every folder up to ``root``, nearest first, for ``[<entities>_]dseg.tsv`` whose
    entities are all entities of the image; the most specific file of the nearest folder
    wins (``sub-01_desc-aseg_dseg.tsv`` next to ``sub-01_desc-aseg_dseg.nii.gz``, else e.g.
    ``desc-aseg_dseg.tsv`` or ``dseg.tsv`` at the root).

    Parameters
    ----------
    image : path-like
        The label image.
    root : path-like or None, default None
        The top folder to search; ``None``: only the image's folder.

    Returns
    -------
    Path or None
    """
    image = Path(image)
    parsed = _split_name(image.name)
    ents = parsed[0] if parsed else {}
    exact = image.parent / (_stem(image.name) + ".tsv")
    if exact.is_file():
        return exact
    folders = [image.parent]
    if root is not None:
        root = Path(root).resolve()
        here = image.parent.resolve()
        while here != root and root in here.parents:
            here = here.parent
            folders.append(here)
    for folder in folders:
        best: tuple[int, Path] | None = None
        for tsv in sorted(folder.glob("*dseg.tsv")):
            found = _split_name(tsv.name)
            if tsv.name != "dseg.tsv" and (found is None or found[1] != "dseg"):
                continue
            tsv_ents = found[0] if found else {}
            if any(ents.get(k) != v for k, v in tsv_ents.items()):
                continue
            if best is None or len(tsv_ents) > best[0]:
                best = (len(tsv_ents), tsv)
        if best is not None:
            return best[1]
    return None


def _stem(name: str) -> str:
    for ext in _IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0]


# --------------------------------------------------------------------------------------
# Finding a segmentation per run
# --------------------------------------------------------------------------------------


def _anat_folder(root: Path, run: Run) -> Path:
    folder = root / f"sub-{run.subject}"
    if run.session:
        folder = folder / f"ses-{run.session}"
    return folder / "anat"


def _candidates(root: Path, run: Run) -> list[tuple[Path, dict[str, str]]]:
    """Label images of the run's subject and session in a derivatives folder."""
    folder = _anat_folder(root, run)
    out = []
    files = sorted({p for e in _IMAGE_EXTENSIONS for p in folder.glob(f"*_dseg{e}")})
    for path in files:
        parsed = _split_name(path.name)
        if parsed is None or parsed[1] != "dseg" or path.name.startswith("."):
            continue
        ents = parsed[0]
        if ents.get("sub") != run.subject or ents.get("ses") != run.session:
            continue
        if _TEMPLATE_SPACE.match(ents.get("space", "")):
            continue
        out.append((path, ents))
    return out


def _pick(
    cands: list[tuple[Path, dict[str, str]]], run: Run, name: str | None, folder: Path
) -> Path:
    """One candidate for the run: by name, then by the run's acq-/run- entities."""
    if name is not None and len(cands) > 1:
        named = [c for c in cands if name in (c[1].get(k) for k in NAME_ENTITIES)]
        if named:
            cands = named
    if len(cands) > 1:
        own = {"acq": run.acquisition, "run": run.run}

        def conflicts(ents: dict[str, str]) -> bool:
            return any(k in ents and ents[k] != v for k, v in own.items())

        def score(ents: dict[str, str]) -> int:
            return sum(k in ents and ents[k] == v for k, v in own.items())

        fitting = [c for c in cands if not conflicts(c[1])] or cands
        top = max(score(c[1]) for c in fitting)
        cands = [c for c in fitting if score(c[1]) == top]
    if len(cands) > 1:
        listed = ", ".join(p.name for p, _ in cands)
        raise QSMInputError(
            folder,
            f"several segmentations fit {run.name}: {listed}; choose one with "
            "--segmentation-name (its seg-/atlas-/desc- label) or give the file itself",
        )
    return cands[0][0]


def find_segmentations(
    runs: list[Run], source: str | Path, *, name: str | None = None
) -> dict[str, Segmentation]:
    """The user segmentation of every run, with its region names (not yet checked).

    Parameters
    ----------
    runs : list of Run
        The runs to process.
    source : path-like
        A BIDS derivatives folder, or one label image (then all ``runs`` must belong to one
        subject and one session).
    name : str or None, default None
        ``--segmentation-name``: the ``desc-`` label of the outputs (validated with
        :func:`validate_segmentation_name`) and, in a folder with several segmentations,
        which one to use; ``None``: from the file name (:func:`segmentation_name`).

    Returns
    -------
    dict[str, Segmentation]
        Run name -> its segmentation (names from the label table; :func:`check_segmentation`
        completes them from the image).

    Raises
    ------
    QSMInputError
        If ``source`` does not exist, a single file is given for several subjects or
        sessions, no (or no unambiguous) segmentation exists for some run's subject and
        session, or a label table is invalid.
    """
    if name is not None:
        validate_segmentation_name(name)
    source = Path(source)
    if not source.exists():
        raise QSMInputError(source, "--segmentation: no such file or folder")
    found: dict[str, Segmentation] = {}
    if source.is_file():
        subjects = sorted({r.subject for r in runs})
        sessions = sorted({r.session or "" for r in runs})
        if len(subjects) > 1:
            raise QSMInputError(
                source,
                "--segmentation with a single file needs exactly one participant, but "
                f"{len(subjects)} are selected ({', '.join('sub-' + s for s in subjects)}); "
                "give a BIDS derivatives folder with one *_dseg.nii.gz per participant, or "
                "select one with --participant-label",
            )
        if len(sessions) > 1:
            raise QSMInputError(
                source,
                "--segmentation with a single file needs one session (scanner coordinates "
                f"differ between sessions), but {len(sessions)} are selected; give a BIDS "
                "derivatives folder or select one with --session-label",
            )
        labels_file = find_labels_file(source)
        seg = Segmentation(
            path=source.resolve(),
            name=name or segmentation_name(source),
            names=read_dseg_tsv(labels_file) if labels_file else {},
            labels_file=labels_file,
        )
        return {run.name: seg for run in runs}
    tables: dict[Path, dict[int, str]] = {}
    for run in runs:
        folder = _anat_folder(source, run)
        cands = _candidates(source, run)
        if not cands:
            who = f"sub-{run.subject}" + (f" ses-{run.session}" if run.session else "")
            raise QSMInputError(
                source,
                f"no segmentation (*_dseg.nii[.gz]) for {who} in {folder}; every processed "
                "participant needs one in the subject's scanner space (or leave out "
                "--segmentation)",
            )
        path = _pick(cands, run, name, folder)
        labels_file = find_labels_file(path, source)
        if labels_file is not None and labels_file not in tables:
            tables[labels_file] = read_dseg_tsv(labels_file)
        found[run.name] = Segmentation(
            path=path.resolve(),
            name=name or segmentation_name(path),
            names=dict(tables[labels_file]) if labels_file else {},
            labels_file=labels_file,
        )
    names = {seg.name for seg in found.values()}
    if len(names) > 1:
        raise QSMInputError(
            source,
            f"the runs' segmentations have different names ({', '.join(sorted(names))}): "
            "one name per invocation keeps the group tables comparable; use "
            "--segmentation-name to choose one",
        )
    return found


# --------------------------------------------------------------------------------------
# Checking a segmentation against a run
# --------------------------------------------------------------------------------------


def _listing(labels: list[int]) -> str:
    shown = ", ".join(str(k) for k in labels[:_SHOW])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > _SHOW else "")


def load_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a label image: 3D, finite, non-negative integers, not empty.

    Parameters
    ----------
    path : path-like
        The label image (any format nibabel reads with an affine: NIfTI, MGH, ...).

    Returns
    -------
    labels : int32 ndarray (X, Y, Z)
    affine : (4, 4) float64 array
        Voxel-to-world affine (mm).

    Raises
    ------
    QSMInputError
        Naming ``path``: unreadable, not 3D, non-integer or negative values, no label.
    """
    path = Path(path)
    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise QSMInputError(path, f"cannot read the segmentation ({exc})") from exc
    shape = tuple(int(n) for n in data.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise QSMInputError(
            path, f"the segmentation must be a 3D label image, but its shape is {data.shape}"
        )
    data = data.reshape(shape)
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.bool_):
            data = data.astype(np.uint8)
        else:
            finite = np.isfinite(data)
            if not finite.all():
                raise QSMInputError(path, "the segmentation has NaN or infinite values")
            frac = np.abs(data - np.rint(data))
            if frac.max(initial=0.0) > 1e-3:
                example = float(data.flat[int(np.argmax(frac))])
                raise QSMInputError(
                    path,
                    f"the segmentation must hold integer labels, but has values such as "
                    f"{example:g} (a probability map or an intensity image?)",
                )
            data = np.rint(data)
    if data.min(initial=0) < 0:
        raise QSMInputError(path, f"negative label {int(data.min())}: labels must be >= 0")
    if data.max(initial=0) > np.iinfo(np.int32).max:
        raise QSMInputError(path, f"label {int(data.max())} is too large (int32)")
    labels = data.astype(np.int32)
    if not labels.any():
        raise QSMInputError(path, "the segmentation has no labelled voxel (all zero)")
    return labels, np.asarray(img.affine, dtype=np.float64)


def _unique_names(names: dict[int, str]) -> dict[int, str]:
    """Names made unique (``_<label>`` appended to repeats and to ``whole_brain``)."""
    from qsm_bids.core.regionstats import WHOLE_BRAIN_NAME

    seen: set[str] = {WHOLE_BRAIN_NAME}
    out: dict[int, str] = {}
    for key in sorted(names):
        value = names[key]
        if value in seen:
            value = f"{value}_{key}"
        seen.add(value)
        out[key] = value
    return out


def check_segmentation(seg: Segmentation, run: Run) -> Segmentation:
    """Check a segmentation against a run before any heavy work; complete its names.

    The image must be a readable 3D integer label image (:func:`load_labels`) that, put on
    the run's GRE grid by world coordinates, labels at least one voxel (else it is not in
    the subject's scanner space).

    Parameters
    ----------
    seg : Segmentation
        From :func:`find_segmentations`.
    run : Run
        The run it is used for.

    Returns
    -------
    Segmentation
        With ``names`` covering exactly the labels present in the image (``label_<n>`` for
        those the table does not name, made unique) and ``warnings`` about unnamed labels
        and labels that fall outside the GRE field of view.

    Raises
    ------
    QSMInputError
        Naming the segmentation file.
    """
    from qsm_bids.core.regionstats import labels_to_grid

    labels, affine = load_labels(seg.path)
    present = [int(k) for k in np.unique(labels) if k > 0]
    ref = nb.load(str(run.phase_files[0]))
    on_grid = labels_to_grid(labels, affine, ref.affine, ref.shape[:3])
    inside = {int(k) for k in np.unique(on_grid) if k > 0}
    if not inside:
        raise QSMInputError(
            seg.path,
            f"no labelled voxel falls inside the GRE field of view of {run.name}: the "
            "segmentation must be in the subject's scanner space (same session, e.g. made "
            "from its T1w), not in a template space",
        )
    warnings = list(seg.warnings)
    unnamed = [k for k in present if not seg.names.get(k)]
    if unnamed:
        where = (
            f"in {seg.labels_file}" if seg.labels_file else "(no dseg.tsv with index/name found)"
        )
        warnings.append(
            f"segmentation {seg.path.name}: label(s) {_listing(unnamed)} have no name {where}; "
            "reported as label_<n>"
        )
    outside = [k for k in present if k not in inside]
    if outside:
        warnings.append(
            f"segmentation {seg.path.name}: label(s) {_listing(outside)} lie outside the GRE "
            f"field of view of {run.name} (0 voxels in the table)"
        )
    names = {k: seg.names.get(k) or f"label_{k}" for k in present}
    return replace(seg, names=_unique_names(names), warnings=tuple(warnings))


__all__ = [
    "DEFAULT_NAME",
    "RESERVED_NAMES",
    "Segmentation",
    "check_segmentation",
    "find_labels_file",
    "find_segmentations",
    "load_labels",
    "read_dseg_tsv",
    "segmentation_name",
    "validate_segmentation_name",
]
