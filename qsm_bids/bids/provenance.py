"""Outcomes that never lie: a run's derivatives tied to what produced them.

Every participant-level run of a :class:`~qsm_bids.bids.layout.Run` gets a *run hash*
(:func:`run_hash`): the SHA-256 of its input files (path, size, modification time), the
metadata read from their sidecars, the recipe's provenance, the qsm_bids version and the
options that change the outputs. The derivative writers record it as ``"RunHash"`` in
every sidecar. So:

* a run **succeeded** only when its ``Chimap`` sidecar exists and records this run's hash
  (:func:`outputs_match`), never because an older ``Chimap`` is on disk;
* before a run starts, derivatives of an earlier run with another hash (another recipe,
  other inputs or options, another version) are **stale** and are removed
  (:func:`remove_stale_outputs`), so that a failed rerun cannot leave an older map looking
  like this run's result; outputs with the same hash (a rerun after an interruption) are
  kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qsm_bids import __version__
from qsm_bids.bids.layout import RUN_ENTITIES, Run

if TYPE_CHECKING:
    from qsm_bids.config import Config
    from qsm_bids.recipe import Recipe

log = logging.getLogger("qsm_bids")

#: the sidecar key holding the run hash
RUN_HASH_KEY = "RunHash"

#: the registration sidecar key saying whether (and why not) the regional table was written
REGIONAL_STATISTICS_KEY = "RegionalStatistics"

_RUN_KEYS = frozenset(short for _, short in RUN_ENTITIES)


def _file_fingerprint(path: Path | str | None) -> list[Any] | None:
    """``[absolute path, size in bytes, mtime in ns]`` (``None`` for no file; size and
    time ``None`` for a missing one)."""
    if path is None:
        return None
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _sidecar_of(image: Path) -> Path:
    name = image.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return image.with_name(name[: -len(ext)] + ".json")
    return image.with_suffix(".json")


def run_hash(
    run: Run,
    config: Config,
    recipe: Recipe,
    *,
    mask_file: Path | str | None = None,
    segmentation_file: Path | str | None = None,
) -> str:
    """The SHA-256 (hex) of everything that determines a run's derivatives.

    Parameters
    ----------
    run : Run
        Its images, their JSON sidecars and its T1w (path, size, mtime in ns), and the
        metadata read from them (echo times in s, field strength in T, phase units, ...).
    config : Config
        The options that change the outputs: ``phase_sign``, the reference mask,
        registration on or off, ``force_regionstats``, the segmentation name.
    recipe : Recipe
        Its provenance (every stage's algorithm and parameters).
    mask_file, segmentation_file : path or None
        The user brain mask and segmentation image used for this run, if any.

    Returns
    -------
    str
        64 hexadecimal digits; the same inputs give the same hash in any process.
    """
    wf = config.workflow
    images = sorted({*run.files, *([run.t1w] if run.t1w is not None else [])})
    record = {
        "qsm_bids": __version__,
        "inputs": [_file_fingerprint(p) for p in images],
        "sidecars": [_file_fingerprint(_sidecar_of(p)) for p in images],
        "metadata": {
            "entities": dict(run.entities),
            "suffix": run.suffix,
            "echo_times_s": list(run.echo_times),
            "field_strength_t": run.field_strength,
            "phase_units": run.phase_units,
            "parts": run.parts,
            "phase_volumes": list(run.phase_volumes),
            "magnitude_volumes": list(run.magnitude_volumes),
        },
        "recipe": recipe.provenance(),
        "options": {
            "phase_sign": wf.phase_sign,
            "registration": wf.registration,
            "force_regionstats": wf.force_regionstats,
            "mask_file": _file_fingerprint(mask_file),
            "reference_mask": _file_fingerprint(wf.reference_mask),
            "segmentation": _file_fingerprint(segmentation_file),
            "segmentation_name": wf.segmentation_name,
        },
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- files
def _run_entities(run: Run) -> dict[str, str]:
    """The run's identifying entities, ``{"sub": "01", "acq": "x", ...}``."""
    pairs = (part.split("-", 1) for part in run.name.split("_"))
    return {k: v for k, v in pairs}


def _belongs_to(name: str, entities: Mapping[str, str]) -> bool:
    """Whether a derivative file name carries exactly the run's identifying entities
    (``space``, ``desc``, ``echo``, ... and the suffix may be anything)."""
    stem = name.split(".", 1)[0]
    ents = {}
    for part in stem.split("_"):
        key, sep, value = part.partition("-")
        if sep and key in _RUN_KEYS:
            ents[key] = value
    return ents == dict(entities)


def anat_dir(output_dir: Path, run: Run) -> Path:
    """``OUTPUT_DIR/sub-X[/ses-Y]/anat``: where the run's derivatives are written."""
    folder = Path(output_dir) / f"sub-{run.subject}"
    if run.session is not None:
        folder = folder / f"ses-{run.session}"
    return folder / "anat"


def run_outputs(output_dir: Path, run: Run) -> list[Path]:
    """Every derivative file of ``run`` (its anat folder) and its report figures
    (``sub-X/figures``), matched by the run's entities (so that ``sub-01`` does not take
    the files of ``sub-01_acq-x``)."""
    entities = _run_entities(run)
    found = []
    for folder in (anat_dir(output_dir, run), Path(output_dir) / f"sub-{run.subject}" / "figures"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.is_file() and _belongs_to(p.name, entities)]
    return sorted(found)


def chimap_sidecar(output_dir: Path, run: Run) -> Path:
    """The run's ``Chimap`` JSON sidecar path."""
    from qsm_bids.bids.derivatives import derivative_path

    return derivative_path(output_dir, run, "Chimap", extension=".json")


def recorded_hash(sidecar: Path) -> str | None:
    """The ``RunHash`` a sidecar records (``None``: missing, unreadable or without one)."""
    try:
        value = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value.get(RUN_HASH_KEY) if isinstance(value, dict) else None


def outputs_match(output_dir: Path, run: Run, expected: str) -> bool:
    """Whether the run's ``Chimap`` and its sidecar exist and the sidecar records
    ``expected`` as its ``RunHash``: the test of a successful run."""
    from qsm_bids.bids.derivatives import derivative_path

    chimap = derivative_path(output_dir, run, "Chimap")
    return chimap.is_file() and recorded_hash(chimap_sidecar(output_dir, run)) == expected


def stale_outputs(output_dir: Path, run: Run, expected: str) -> list[Path]:
    """The run's derivatives when they come from another run: its ``Chimap`` sidecar
    records another (or no) hash, or any of its sidecars records another hash. Empty
    when there is nothing, or everything recorded is ``expected`` (a resumed run)."""
    files = run_outputs(output_dir, run)
    if not files:
        return []
    chimap = chimap_sidecar(output_dir, run)
    if chimap.is_file() and recorded_hash(chimap) != expected:
        return files
    for path in files:
        if path.suffix == ".json":
            found = recorded_hash(path)
            if found is not None and found != expected:
                return files
    return []


def remove_stale_outputs(output_dir: Path, run: Run, expected: str) -> list[Path]:
    """Remove the run's derivatives and figures when they come from another run (see
    :func:`stale_outputs`), logging each file; returns the removed files."""
    stale = stale_outputs(output_dir, run, expected)
    if stale:
        root = Path(output_dir)
        log.warning(
            "%s: removing %d output file(s) of an earlier run with other inputs, recipe, "
            "options or version (RunHash differs): %s",
            run.name,
            len(stale),
            ", ".join(str(p.relative_to(root)) for p in stale),
        )
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def regional_statistics_skipped(output_dir: Path, run: Run) -> str | None:
    """Why the registration writer did not write the AAL3 table on purpose (the
    ``RegionalStatistics`` value of the run's transforms' JSON when it starts with
    ``"skipped"``, see :func:`qsm_bids.interfaces.registration.read_regionstats_status`),
    else ``None``."""
    from qsm_bids.interfaces.registration import read_regionstats_status

    note = read_regionstats_status(output_dir, run)
    return note if note is not None and note.lower().startswith("skipped") else None
