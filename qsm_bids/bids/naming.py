"""BIDS file names: splitting them into entities, suffix and extension, and the run prefix.

Used by the report (finding a participant's runs and their files) and by the group level
(joining the runs' region tables); pure string handling, no file access.
"""

from __future__ import annotations

#: Extensions recognised in derivative and raw file names (longest first).
EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".json", ".tsv", ".mat", ".h5", ".svg", ".png")
#: Entities that name a derivative of a run (a space, a description, a transform's ends)
#: rather than the run itself.
DERIVATIVE_ENTITIES: tuple[str, ...] = (
    "space",
    "res",
    "den",
    "desc",
    "label",
    "from",
    "to",
    "mode",
)
#: Entities of raw files that vary within a run.
RAW_VARYING_ENTITIES: tuple[str, ...] = ("echo", "part")


def split_bids_name(name: str) -> tuple[list[tuple[str, str]], str, str] | None:
    """Split a BIDS file name into its entities, suffix and extension.

    Parameters
    ----------
    name : str
        E.g. ``"sub-01_ses-1_desc-aal3_dseg.nii.gz"``.

    Returns
    -------
    tuple or None
        ``([("sub", "01"), ("ses", "1"), ("desc", "aal3")], "dseg", ".nii.gz")``, or
        ``None`` when the name is not of that form (no ``sub-`` first, a hidden file, an
        unknown extension, a part without ``key-value``).
    """
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
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


def run_entities(
    entities: list[tuple[str, str]], *, drop: tuple[str, ...] = DERIVATIVE_ENTITIES
) -> list[tuple[str, str]]:
    """The entities that identify the run (those in ``drop`` left out), in name order."""
    return [(k, v) for k, v in entities if k not in drop]


def run_prefix(
    entities: list[tuple[str, str]], *, drop: tuple[str, ...] = DERIVATIVE_ENTITIES
) -> str:
    """The run's prefix, e.g. ``"sub-01_ses-1_run-1"`` from the entities of any of its files.

    Parameters
    ----------
    entities : list of (str, str)
        From :func:`split_bids_name`.
    drop : tuple of str, default :data:`DERIVATIVE_ENTITIES`
        Entities left out (for raw files: :data:`RAW_VARYING_ENTITIES`).
    """
    return "_".join(f"{k}-{v}" for k, v in run_entities(entities, drop=drop))


def name_entities(name: str) -> dict[str, str] | None:
    """``{key: value}`` of a BIDS file name, or ``None`` when it is not one."""
    parsed = split_bids_name(name)
    return dict(parsed[0]) if parsed else None


__all__ = [
    "DERIVATIVE_ENTITIES",
    "EXTENSIONS",
    "RAW_VARYING_ENTITIES",
    "name_entities",
    "run_entities",
    "run_prefix",
    "split_bids_name",
]
