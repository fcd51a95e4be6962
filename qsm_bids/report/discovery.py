"""Finding a participant's runs: their derivatives in the output folder and their raw echoes.

A run is identified by its derivative maps (the Chimap, masks, field maps, R2*, labels):
transforms (``_from-*_to-*_xfm.*``), figures and tables are attached to the run whose
entities they carry but never make a run of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from qsm_bids.bids.naming import RAW_VARYING_ENTITIES, run_entities, run_prefix, split_bids_name

#: Image extensions.
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
#: Suffixes that are not maps of the run (a transform) and do not make a run.
NOT_MAPS: frozenset[str] = frozenset({"xfm"})
#: ``desc-`` label of the built-in atlas (AAL3) labels and tables.
ATLAS_DESC = "aal3"
#: ``space-`` label of the native (GRE) space in older outputs (``_space-orig_dseg``).
ORIG_SPACE = "orig"


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
        ``(space, desc, suffix, extension) -> Path`` of the maps, tables and sidecars;
        ``space``/``desc`` are ``None`` when absent.
    transforms : list of Path
        The run's transform files (``*_xfm.*``) and their JSON sidecars.
    """

    prefix: str
    entities: dict[str, str]
    files: dict[tuple[str | None, str | None, str, str], Path] = field(default_factory=dict)
    transforms: list[Path] = field(default_factory=list)

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

    @property
    def has_maps(self) -> bool:
        """Whether the run has at least one derivative image other than a transform."""
        return any(k[3] in NIFTI_EXTENSIONS and k[2] not in NOT_MAPS for k in self.files)

    def atlas_labels(self) -> Path | None:
        """The AAL3 labels in subject space: ``<prefix>_desc-aal3_dseg`` (the current name)
        or ``<prefix>_space-orig_dseg`` (older outputs)."""
        return self.get("dseg", desc=ATLAS_DESC) or self.get("dseg", space=ORIG_SPACE)

    def segmentations(self) -> list[tuple[str, Path]]:
        """User segmentations on the run's grid as ``(name, path)``, by name:
        ``<prefix>_desc-<name>_dseg`` or ``<prefix>_space-orig_desc-<name>_dseg``."""
        found: dict[str, Path] = {}
        for (space, desc, suffix, ext), path in sorted(self.files.items(), key=lambda i: str(i[1])):
            if suffix != "dseg" or ext not in NIFTI_EXTENSIONS or not desc or desc == ATLAS_DESC:
                continue
            if space in (None, ORIG_SPACE):
                found.setdefault(desc, path)
        return sorted(found.items())

    def xfm_sidecars(self) -> list[tuple[Path, dict]]:
        """The readable JSON sidecars of the run's transforms, by name."""
        return [
            (p, d)
            for p in sorted(self.transforms)
            if p.name.endswith(".json") and (d := read_json(p)) is not None
        ]

    def sidecars(self) -> list[tuple[Path, dict]]:
        """Every readable JSON sidecar of the run's maps, the susceptibility map's first."""
        order = sorted(
            (p for k, p in self.files.items() if k[3] == ".json"),
            key=lambda p: (not p.name.endswith(f"{self.prefix}_Chimap.json"), p.name),
        )
        return [(p, d) for p in order if (d := read_json(p)) is not None]

    @property
    def label(self) -> str:
        """Human-readable run name, e.g. ``"session 1, acquisition x, run 1"``."""
        names = {"ses": "session", "acq": "acquisition", "run": "run", "task": "task"}
        bits = [f"{names.get(k, k)} {v}" for k, v in self.entities.items() if k != "sub"]
        return ", ".join(bits) if bits else "single run"


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` when unreadable or not an object."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


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
        The runs with at least one derivative map, sorted by prefix; empty when the
        subject has none. Transforms are attached to their run; files in ``figures/``
        are not indexed.
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
        prefix = run_prefix(ents)
        run = runs.setdefault(prefix, RunFiles(prefix=prefix, entities=dict(run_entities(ents))))
        if suffix in NOT_MAPS:
            run.transforms.append(path)
            continue
        key_ents = dict(ents)
        run.files[(key_ents.get("space"), key_ents.get("desc"), suffix, ext)] = path
    return [runs[k] for k in sorted(runs) if runs[k].has_maps]


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
        if parsed is None or parsed[2] not in NIFTI_EXTENSIONS:
            continue
        ents, suffix, _ = parsed
        if suffix not in ("MEGRE", "T2starw"):
            continue
        d = dict(ents)
        mags = runs.setdefault(run_prefix(ents, drop=RAW_VARYING_ENTITIES), [])
        if d.get("part") == "mag":
            try:
                echo = int(d.get("echo", "1"))
            except ValueError:
                echo = 1
            mags.append((echo, path))
    return {k: [p for _, p in sorted(v)] for k, v in sorted(runs.items())}


def raw_root_from_description(output_dir: Path) -> Path | None:
    """The raw dataset recorded in ``dataset_description.json``'s ``DatasetLinks.raw``,
    when it is a local folder that still exists."""
    desc = read_json(Path(output_dir) / "dataset_description.json")
    try:
        uri = desc["DatasetLinks"]["raw"]  # type: ignore[index]
    except (KeyError, TypeError):
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


__all__ = [
    "ATLAS_DESC",
    "RunFiles",
    "find_raw_runs",
    "find_subject_runs",
    "first_echo_magnitude",
    "raw_root_from_description",
    "read_json",
]
