"""Name and write BIDS derivatives: images, JSON sidecars and ``dataset_description.json``.

Every file is written atomically: to a hidden temporary file in the destination folder,
flushed to disk (``fsync``), then renamed over the final name with :func:`os.replace`. A
crash or a concurrent reader therefore never sees a partial file, and an image's JSON
sidecar is written only after the image itself exists, so a sidecar implies its image.

Derivative names follow BIDS: the run's entities (``sub``, ``ses``, ``acq``, ``run``, ...;
never ``echo`` or ``part``), then ``space`` and ``desc``, then the suffix, e.g.
``sub-01/ses-A/anat/sub-01_ses-A_acq-x_run-1_desc-romeo_Chimap.nii.gz``.

One space convention: maps on the run's own (GRE) grid carry no ``space-`` entity (their
sidecars' ``SpatialReference`` names the echo image whose grid they share); maps in template
space carry ``space-MNI152NLin2009aSym``. Every sidecar has a ``Description`` and
``Sources`` as BIDS URIs: ``bids:raw:<path>`` for files of the raw dataset (``DatasetLinks``
of ``dataset_description.json``), ``bids::<path>`` for files of the derivatives themselves.
Files that BIDS has no name for (the field maps in Hz, transforms, region tables, reports,
logs) are listed in ``.bidsignore`` with the reason (:data:`BIDSIGNORE`).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.bids.layout import RUN_ENTITIES, Run

#: Name of the pipeline in ``GeneratedBy`` and the default derivatives folder name.
PIPELINE_NAME = "qsm_bids"
#: BIDS version the derivatives follow.
BIDS_VERSION = "1.10.0"
#: Source code location recorded in ``GeneratedBy`` (placeholder until the project is public).
CODE_URL = "https://github.com/qsm-bids/qsm_bids"
#: ``HowToAcknowledge`` of the derivatives' ``dataset_description.json``.
HOW_TO_ACKNOWLEDGE = (
    "Cite qsm_bids (GeneratedBy.CodeURL, with its version) and the methods it ran: paste the "
    "methods text and its references from logs/CITATION.md (also in each participant's "
    "report) into the methods section of your paper."
)

#: ``.bidsignore`` of the derivatives: (pattern, why BIDS validation must skip it). Folder
#: patterns have no trailing slash: the BIDS validator 3 does not match ``dir/`` to the
#: folder itself (measured with bids-validator-deno 3.0: ``sub-*/figures/`` left
#: ``/sub-01/figures/`` reported as NOT_INCLUDED).
BIDSIGNORE: tuple[tuple[str, str], ...] = (
    ("logs", "log files, the run configuration and the methods text; not BIDS data"),
    ("group", "group-level tables and figures (qsm-bids ... group); not BIDS data"),
    ("sub-*.html", "participant reports"),
    ("sub-*/figures", "figures of the participant reports"),
    (
        "*_desc-total_fieldmap.*",
        "total field (Hz) fitted over the echoes: BIDS has no suffix for a field map in anat/ "
        "(fieldmap belongs to fmap/, for distortion correction, which this is not)",
    ),
    (
        "*_desc-local_fieldmap.*",
        "local (tissue) field (Hz) after background field removal: no BIDS suffix either",
    ),
    (
        "*_xfm.*",
        "ANTs transforms to and from the template: BIDS 1.10 defines no transform files yet "
        "(names follow the BEP014 draft and NiPreps: from-, to-, mode-)",
    ),
    ("*_regionstats.*", "regional susceptibility tables: no BIDS suffix for them"),
)
#: Patterns that older qsm_bids versions wrote and this one no longer does (an existing
#: ``.bidsignore`` is rewritten without them; other lines a user added are kept).
_STALE_BIDSIGNORE = ("logs/", "group/", "sub-*/figures/")

_LABEL = re.compile(r"^[a-zA-Z0-9+]+$")
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")

# BIDS filename order: source entities up to proc, then space, then chunk, then desc
_BEFORE_SPACE = [short for _, short in RUN_ENTITIES if short != "chunk"]


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def _run_entities(run: Run) -> dict[str, str]:
    if run.entities:
        return {str(k): str(v) for k, v in run.entities.items()}
    ents = {"sub": run.subject, "ses": run.session, "acq": run.acquisition, "run": run.run}
    return {k: v for k, v in ents.items() if v is not None}


def derivative_path(
    output_dir: Path,
    run: Run,
    suffix: str,
    *,
    desc: str | None = None,
    space: str | None = None,
    extension: str = ".nii.gz",
) -> Path:
    """Path of a derivative of ``run`` in a BIDS derivatives dataset.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset.
    run : Run
        The source run; its entities (``sub``, ``ses``, ``acq``, ``run`` and any other
        identifying entity) are carried over; ``echo`` and ``part`` are not.
    suffix : str
        BIDS suffix, e.g. ``"Chimap"``, ``"R2starmap"``, ``"mask"`` (alphanumeric).
    desc : str or None, default None
        ``desc-`` label (alphanumeric), omitted when ``None``.
    space : str or None, default None
        ``space-`` label (alphanumeric), omitted when ``None`` (the input space).
    extension : str, default ".nii.gz"
        File extension, with its leading dot (``".json"``, ``".tsv"``, ...).

    Returns
    -------
    Path
        ``<output_dir>/sub-X/[ses-Y/]anat/sub-X[_ses-Y][_acq-Z][_run-N][_space-S][_desc-D]_
        <suffix><extension>``.

    Raises
    ------
    ValueError
        If ``suffix``, ``desc`` or ``space`` is not alphanumeric, or ``extension`` does not
        start with a dot.
    """
    for what, value in (("suffix", suffix), ("desc", desc), ("space", space)):
        if value is not None and not _LABEL.match(value):
            raise ValueError(f"BIDS {what} must be alphanumeric, got {value!r}")
    if not extension.startswith("."):
        raise ValueError(f"extension must start with '.', got {extension!r}")
    ents = _run_entities(run)
    parts = [f"{k}-{ents[k]}" for k in _BEFORE_SPACE if k in ents]
    parts += [f"{k}-{v}" for k, v in ents.items() if k not in _BEFORE_SPACE and k != "chunk"]
    if space is not None:
        parts.append(f"space-{space}")
    if "chunk" in ents:
        parts.append(f"chunk-{ents['chunk']}")
    if desc is not None:
        parts.append(f"desc-{desc}")
    folder = Path(output_dir) / f"sub-{ents['sub']}"
    if "ses" in ents:
        folder = folder / f"ses-{ents['ses']}"
    return folder / "anat" / ("_".join(parts) + f"_{suffix}{extension}")


def derivative_uri(run: Run, suffix: str, **kwargs: Any) -> str:
    """BIDS URI ``bids::<path>`` of a derivative of ``run`` in this derivatives dataset.

    Parameters
    ----------
    run : Run
        The source run.
    suffix : str
        BIDS suffix.
    **kwargs
        ``desc``, ``space``, ``extension`` as in :func:`derivative_path`.

    Returns
    -------
    str
        E.g. ``"bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz"``.
    """
    return "bids::" + derivative_path(Path(""), run, suffix, **kwargs).as_posix()


def sidecar_path(image_path: Path) -> Path:
    """The JSON sidecar path of an image (``.nii.gz`` / ``.nii`` replaced by ``.json``)."""
    image_path = Path(image_path)
    name = image_path.name
    for ext in _NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return image_path.with_name(name[: -len(ext)] + ".json")
    return image_path.with_suffix(".json")


def bids_uri(path: Path, *, bids_dir: Path | None = None, dataset: str = "raw") -> str:
    """BIDS URI ``bids:<dataset>:<relative path>`` of a file of a dataset.

    Parameters
    ----------
    path : Path
        A file of the dataset.
    bids_dir : Path or None, default None
        The dataset's root. When ``None`` the root is taken to be the folder that holds
        the file's ``sub-<label>`` folder.
    dataset : str, default "raw"
        The key of the dataset in ``DatasetLinks``.

    Returns
    -------
    str
        E.g. ``"bids:raw:sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"``.
    """
    path = Path(path)
    if bids_dir is not None:
        rel = path.resolve().relative_to(Path(bids_dir).resolve()).as_posix()
    else:
        parts = path.parts
        idx = [i for i, p in enumerate(parts[:-1]) if p.startswith("sub-")]
        rel = "/".join(parts[idx[0] :]) if idx else path.name
    return f"bids:{dataset}:{rel}"


# --------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    name = path.name
    ext = next((e for e in _NIFTI_EXTENSIONS if name.endswith(e)), path.suffix)
    base = name[: len(name) - len(ext)] if ext else name
    return path.with_name(f".{base}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{ext}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:  # makes the rename durable; not possible on every platform/file system
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: errors of a write that the user fixes with space or permissions, not a bug
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def explain_write_error(exc: OSError, path: Path) -> OSError:
    """An :class:`OSError` of writing ``path`` restated for the user: the file, its folder
    and, for a full disk or quota, the free space there. Other errors are returned as
    they are."""
    if exc.errno not in _DISK_ERRORS:
        return exc
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1024**2:.1f} MB free"
    except OSError:
        free = "free space unknown"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some space or give another output folder, then rerun the same command"
    else:
        hint = "make the folder writable or give another output folder"
    name = Path(path).name
    return OSError(exc.errno, f"cannot write {name} in {folder} ({reason}; {free}): {hint}")


def _commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and rename it over ``path``; remove ``tmp`` on any failure."""
    try:
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    """Replace non-finite floats (invalid in JSON) by None, recursively."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite(obj.tolist())
    return obj


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a hidden temporary file in the same folder,
    ``fsync``, then :func:`os.replace` over ``path``. The one atomic writer of qsm_bids:
    text, JSON, figures and other files all go through it (NIfTI images through
    :func:`write_nifti_atomic`, which streams).

    Parameters
    ----------
    path : Path
        Destination; its folder is created if needed.
    data : bytes
        Content.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        _commit(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise explain_write_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : Path
        Destination; its folder is created if needed.
    obj : JSON-serialisable
        numpy scalars and arrays, tuples, sets and Paths are converted; NaN and infinite
        floats (not valid JSON) are written as ``null``.

    Returns
    -------
    Path
        ``path``.
    """
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def write_nifti_atomic(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    header: Any = None,
    dtype: Any = np.float32,
    sidecar: dict | None = None,
) -> Path:
    """Write a NIfTI-1 image atomically, then (optionally) its JSON sidecar.

    Parameters
    ----------
    path : Path
        Destination (``.nii.gz`` or ``.nii``); its folder is created if needed.
    data : ndarray
        Image data (3D, or 4D with the extra dimension last). Boolean data (masks) is
        always written as uint8.
    affine : (4, 4) array
        Voxel-to-world (RAS+ mm) affine; written as both sform and qform.
    header : nibabel header or None, default None
        Source header (e.g. of the echo-1 phase) whose sform/qform codes and other fields
        are copied; scaling, intent and display range are reset. ``None``: a fresh header
        with sform and qform codes 1 (scanner).
    dtype : numpy dtype, default np.float32
        On-disk data type (``np.uint8`` for masks).
    sidecar : dict or None, default None
        JSON sidecar content, written atomically after the image (same name, ``.json``).

    Returns
    -------
    Path
        ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not any(path.name.endswith(e) for e in _NIFTI_EXTENSIONS):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asanyarray(data)
    if arr.dtype == bool:
        dtype = np.uint8
    dtype = np.dtype(dtype)
    arr = arr.astype(dtype, copy=False)
    affine = np.asarray(affine, dtype=np.float64)

    sform_code, qform_code = 1, 1
    hdr = None
    if header is not None:
        hdr = nib.Nifti1Header.from_header(header)
        sform_code = int(hdr["sform_code"]) or 1
        qform_code = int(hdr["qform_code"]) or 1
    img = nib.Nifti1Image(arr, affine, header=hdr)
    img.set_data_dtype(dtype)
    out_hdr = img.header
    out_hdr.set_slope_inter(1.0, 0.0)
    out_hdr["intent_code"] = 0
    out_hdr["intent_name"] = b""
    out_hdr["cal_min"] = 0.0
    out_hdr["cal_max"] = 0.0
    out_hdr["descrip"] = PIPELINE_NAME.encode()
    out_hdr["aux_file"] = b""
    out_hdr.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)

    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as raw:
            if path.name.endswith(".gz"):
                # no file name and a zero time stamp in the gzip header (the BIDS validator
                # warns about names there; identical content gives identical files)
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0
                ) as gz:
                    img.to_stream(gz)
            else:
                img.to_stream(raw)
        _commit(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise explain_write_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sidecar is not None:
        write_json_atomic(sidecar_path(path), sidecar)
    return path


# --------------------------------------------------------------------------------------
# Dataset description and sidecars
# --------------------------------------------------------------------------------------


def detect_container(root: Path = Path("/")) -> dict | None:
    """The container this process runs in, as a BIDS ``GeneratedBy.Container`` object.

    Parameters
    ----------
    root : Path, default Path("/")
        File system root to look for ``.dockerenv`` / ``run/.containerenv`` in (for tests).

    Returns
    -------
    dict or None
        ``{"Type": "apptainer" | "singularity", "URI": <image>}`` from the
        ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER`` environment variables,
        ``{"Type": "docker"}`` if ``/.dockerenv`` exists, ``{"Type": "podman"}`` if
        ``/run/.containerenv`` exists; ``None`` outside a container.
    """
    for var, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        uri = os.environ.get(var)
        if uri:
            return {"Type": kind, "URI": uri}
    root = Path(root)
    if (root / ".dockerenv").exists():
        return {"Type": "docker"}
    if (root / "run" / ".containerenv").exists():
        return {"Type": "podman"}
    return None


def _raw_description(source_dir: Path | None) -> dict:
    """The raw dataset's ``dataset_description.json`` ({} if absent or unreadable)."""
    if source_dir is None:
        return {}
    try:
        desc = json.loads((Path(source_dir) / "dataset_description.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return desc if isinstance(desc, dict) else {}


def dataset_description(
    *, version: str, container: dict | None = None, source_dir: Path | None = None
) -> dict:
    """Content of the derivatives' ``dataset_description.json`` (see
    :func:`write_dataset_description`)."""
    generated: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "Version": str(version),
        "CodeURL": CODE_URL,
    }
    if container is None:
        container = detect_container()
    if container:
        generated["Container"] = dict(container)
    desc: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    raw = _raw_description(source_dir)
    # derived data: the raw data's authors and terms of use carry over
    for key in ("Authors", "License"):
        if raw.get(key):
            desc[key] = raw[key]
    desc["HowToAcknowledge"] = HOW_TO_ACKNOWLEDGE
    if source_dir is not None:
        source: dict[str, Any] = {"URL": "bids:raw:"}
        if isinstance(raw.get("DatasetDOI"), str) and raw["DatasetDOI"]:
            source["DOI"] = raw["DatasetDOI"]
        desc["SourceDatasets"] = [source]
        desc["DatasetLinks"] = {"raw": Path(source_dir).expanduser().resolve().as_uri()}
    return desc


def write_dataset_description(
    output_dir: Path,
    *,
    version: str,
    container: dict | None = None,
    source_dir: Path | None = None,
) -> Path:
    """Write ``<output_dir>/dataset_description.json`` of the derivatives dataset.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset (created if needed).
    version : str
        qsm_bids version (``GeneratedBy[0].Version``).
    container : dict or None, default None
        ``GeneratedBy[0].Container``; ``None`` detects it (:func:`detect_container`).
    source_dir : Path or None, default None
        Raw dataset; recorded as ``DatasetLinks.raw`` (a ``file://`` URI) so that the
        sidecars' ``bids:raw:`` ``Sources`` resolve, and as ``SourceDatasets``
        (``bids:raw:``, with its ``DatasetDOI`` where it has one). Its ``Authors`` and
        ``License`` are carried over (derived data falls under the raw data's terms).

    Returns
    -------
    Path
        The file's path. Content: ``Name`` "qsm_bids", ``BIDSVersion`` "1.10.0",
        ``DatasetType`` "derivative", ``GeneratedBy``, ``HowToAcknowledge``, and with
        ``source_dir`` ``SourceDatasets``, ``DatasetLinks``, ``Authors``, ``License``. An
        existing file with the same content is left untouched; otherwise it is replaced
        atomically, so concurrent participant-level processes are safe.
    """
    path = Path(output_dir) / "dataset_description.json"
    desc = dataset_description(version=version, container=container, source_dir=source_dir)
    try:
        if json.loads(path.read_text(encoding="utf-8")) == desc:
            return path
    except (OSError, ValueError):
        pass
    return write_json_atomic(path, desc)


#: First line of the README qsm_bids writes (a README without it is the user's: kept).
README_TITLE = "# qsm_bids derivatives"


def readme_text() -> str:
    """The derivatives' README: what each file is (Markdown)."""
    ignored = "\n".join(f"- `{pattern}`: {why}" for pattern, why in BIDSIGNORE)
    return f"""{README_TITLE}

Quantitative susceptibility mapping (QSM) of the multi-echo gradient-echo runs of the raw
BIDS dataset named in `dataset_description.json` (`DatasetLinks.raw`), computed by qsm_bids
(`GeneratedBy`: version, code URL, container). What ran, with its parameters and references,
is in `logs/` and in the participant reports (`sub-<label>.html`).

## Files per run

In `sub-<label>/[ses-<label>/]anat/`, `<prefix>` being the run's entities (for example
`sub-01_ses-1_run-1`):

- `<prefix>_Chimap.nii.gz`: magnetic susceptibility (ppm), referenced as its sidecar says.
- `<prefix>_R2starmap.nii.gz` (1/s) and `<prefix>_T2starmap.nii.gz` (s), where computed.
- `<prefix>_desc-brain_mask.nii.gz`: brain mask; `<prefix>_desc-local_mask.nii.gz`: the
  mask the local field and the susceptibility are defined on.
- `<prefix>_desc-total_fieldmap.nii.gz`: total field (Hz) fitted over the echoes;
  `<prefix>_desc-local_fieldmap.nii.gz`: local (tissue) field (Hz) after background field
  removal. They are not `fmap/` field maps for distortion correction.
- With registration: `<prefix>_space-MNI152NLin2009aSym_Chimap.nii.gz` (susceptibility in
  template space), `<prefix>_desc-aal3_dseg.nii.gz` (+ `.tsv` of region names: the AAL3
  atlas on the run's grid), the transforms `<prefix>_from-*_to-*_mode-image_*xfm.*` (how to
  apply them: the `_xfm.json`), and `<prefix>_desc-aal3_regionstats.tsv` (susceptibility
  per region, columns described in its `.json`).
- With `--segmentation`: `<prefix>_desc-<name>_dseg.nii.gz` (+ `.tsv`) and
  `<prefix>_desc-<name>_regionstats.tsv`.

Maps on the run's own voxel grid have no `space-` entity; their sidecars'
`SpatialReference` names the raw echo image whose grid they share. Every sidecar has a
`Description` and `Sources` as BIDS URIs: `bids:raw:...` for raw files, `bids::...` for
files of this dataset.

## Not BIDS data (`.bidsignore`)

{ignored}

## Authors, license, acknowledgement

`Authors` and `License` in `dataset_description.json` are copied from the raw dataset
(derived data falls under its terms); add those who ran the processing. How to acknowledge:
`HowToAcknowledge` there.
"""


def write_readme(output_dir: Path) -> Path:
    """Write ``<output_dir>/README.md`` (:func:`readme_text`) unless it exists with the same
    content or is the user's own (a README without :data:`README_TITLE` as its first line).

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset.

    Returns
    -------
    Path
        The README's path.
    """
    path = Path(output_dir) / "README.md"
    text = readme_text()
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        old = None
    if old is not None and (old == text or not old.startswith(README_TITLE)):
        return path
    return write_text_atomic(path, text)


def bidsignore_text(existing: str = "") -> str:
    """Content of the derivatives' ``.bidsignore``: :data:`BIDSIGNORE` with one comment per
    pattern, then the lines of ``existing`` that a user added (not ours, not comments, not
    the stale patterns of older versions)."""
    lines = ["# written by qsm_bids: files that are not BIDS data, or that BIDS has no name for"]
    for pattern, why in BIDSIGNORE:
        lines += [f"# {why}", pattern]
    ours = {p for p, _ in BIDSIGNORE} | set(_STALE_BIDSIGNORE)
    kept = [
        ln.strip()
        for ln in existing.splitlines()
        if ln.strip() and not ln.lstrip().startswith("#") and ln.strip() not in ours
    ]
    if kept:
        lines += ["# kept from the existing file", *dict.fromkeys(kept)]
    return "\n".join(lines) + "\n"


def write_bidsignore(output_dir: Path) -> Path:
    """Write ``<output_dir>/.bidsignore`` (:func:`bidsignore_text`): created if missing,
    brought up to date if an older version wrote it (a user's own lines are kept), left
    untouched if current. Written atomically, so concurrent runs are safe.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset.

    Returns
    -------
    Path
        The file's path.
    """
    path = Path(output_dir) / ".bidsignore"
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        old = ""
    text = bidsignore_text(old)
    if text != old:
        write_text_atomic(path, text)
    return path


def sidecar_for(
    run: Run | None,
    *,
    units: str | None = None,
    skull_stripped: bool | None = None,
    provenance: Mapping[str, Any] | None = None,
    sources: Sequence[Path] | None = None,
    bids_dir: Path | None = None,
    description: str | None = None,
    spatial_reference: Path | str | None = None,
) -> dict:
    """Common JSON sidecar fields of a derivative of ``run``.

    Parameters
    ----------
    run : Run or None
        The source run; None for files that are not a BIDS run (``qsm-bids invert``),
        which then need ``sources``.
    units : str or None, default None
        ``Units`` of the map (``"ppm"``, ``"1/s"``, ``"s"``, ``"Hz"``, ``"rad"``); omitted
        when ``None`` (masks, segmentations).
    skull_stripped : bool or None, default None
        ``SkullStripped`` (required by BIDS for image derivatives other than masks);
        omitted when ``None``.
    provenance : mapping or None, default None
        Extra fields merged at the top level, e.g. the algorithms and parameters per stage
        (``{"QSMPipeline": {"unwrap": {"algorithm": "romeo", ...}, ...}}``) and notes.
    sources : sequence of Path or None, default None
        Input files; default all of the run's phase then magnitude images.
    bids_dir : Path or None, default None
        Raw dataset root, for the relative paths of ``Sources``; by default inferred from
        the files' ``sub-<label>`` folder.
    description : str or None, default None
        ``Description``: what the image is, in words.
    spatial_reference : Path or str or None, default None
        ``SpatialReference``: a raw file whose grid the image shares (a Path, written as its
        ``bids:raw:`` URI) or a template name / URI (a str, written as is).

    Returns
    -------
    dict
        ``{"Description": ..., "Units": ..., "SkullStripped": ..., "SpatialReference":
        ..., "Sources": ["bids:raw:sub-01/anat/...", ...], **provenance}``.
    """
    if sources is None and run is None:
        raise ValueError("sidecar_for needs the run or the sources")
    files = list(sources) if sources is not None else list(run.files)
    side: dict[str, Any] = {}
    if description is not None:
        side["Description"] = description
    if units is not None:
        side["Units"] = units
    if skull_stripped is not None:
        side["SkullStripped"] = bool(skull_stripped)
    if isinstance(spatial_reference, Path):
        side["SpatialReference"] = bids_uri(spatial_reference, bids_dir=bids_dir)
    elif spatial_reference is not None:
        side["SpatialReference"] = spatial_reference
    side["Sources"] = [bids_uri(Path(f), bids_dir=bids_dir) for f in files]
    if provenance:
        side.update(dict(provenance))
    return side
