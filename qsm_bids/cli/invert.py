"""``qsm-bids invert``: a susceptibility map from a field map made by another tool.

::

    qsm-bids invert FIELD MASK OUTPUT --unit ppm|Hz [--field-strength T] [--total]
                    [--magnitude PATH] [--noise PATH] [--reference-mask PATH]
                    [--pipeline NAME|PATH.toml] [--b0-direction X Y Z] [-v|-q]

The files are read and checked here (one grid, 3D, finite inside a non-empty mask, the
unit known); the numerics are :func:`qsm_bids.invert.invert_field`. OUTPUT is written
atomically, then its JSON sidecar. Exit codes: 0 success, 1 the processing failed, 2 bad
input or options (nothing is written).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.errors import QSMInputError

log = logging.getLogger("qsm_bids")

#: Help text of the ``invert`` sub-command's parser.
DESCRIPTION = """\
Susceptibility (QSM) from a field map that another tool made: the recipe's dipole
inversion and referencing stages (with --total: its background-removal stage first,
including its susceptibility-feedback passes when the recipe sets dipole_feedback > 0)
run on FIELD inside MASK, and the map is written to OUTPUT (.nii.gz or .nii) in ppm, on
FIELD's grid and affine, float32, zero outside the mask, with a JSON sidecar (Units,
every stage's algorithm and parameters, field strength, B0 direction, Sources, software
version). All images must share FIELD's grid (shape and affine) and be 3D. Not run here:
the recipe's mask, unwrapping and echo-combination stages, the two-pass inversion
(two_pass = true) and the phase-sign check (FIELD must follow the convention that
paramagnetic sources have a positive field along B0). Exit codes: 0 success, 1 the
processing failed, 2 bad input or options (nothing is written)."""

#: Accepted spellings of ``--unit``, lower case -> the unit's name.
UNITS = {"ppm": "ppm", "hz": "Hz"}


def _unit(value: str) -> str:
    try:
        return UNITS[value.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"must be ppm or Hz, got {value!r}") from None


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return x


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be finite, got {value!r}")
    return x


def add_invert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``qsm-bids invert`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Parser (or sub-parser) to extend; its description is left to the caller
        (:data:`DESCRIPTION` is suitable).
    """
    from qsm_bids.recipe import builtin_recipes

    parser.add_argument(
        "field",
        type=Path,
        metavar="FIELD",
        help="field map (3D NIfTI) in the unit of --unit: the local (tissue) field, or the "
        "total field with --total",
    )
    parser.add_argument(
        "mask",
        type=Path,
        metavar="MASK",
        help="mask (3D NIfTI, non-zero = inside) where FIELD is valid",
    )
    parser.add_argument(
        "output",
        type=Path,
        metavar="OUTPUT",
        help="the susceptibility map to write (.nii.gz or .nii; ppm); its sidecar goes next "
        "to it (.json)",
    )
    parser.add_argument(
        "--unit",
        type=_unit,
        metavar="ppm|Hz",
        help="unit of FIELD and --noise (required, no default): 'ppm' of B0, or 'Hz' "
        "(then --field-strength is required)",
    )
    parser.add_argument(
        "--field-strength",
        type=_positive_float,
        metavar="T",
        help="B0 in tesla, e.g. 2.89 (required with --unit Hz; with ppm optional and "
        "recorded, and used to run --total's background removal in Hz)",
    )
    parser.add_argument(
        "--total",
        action="store_true",
        help="FIELD is the total field (background included): run the recipe's background "
        "removal first, with its susceptibility-feedback passes (dipole_feedback)",
    )
    parser.add_argument(
        "--magnitude",
        type=Path,
        metavar="PATH",
        help="magnitude image (3D NIfTI, any scale) for the algorithms that use one (e.g. "
        "MEDI's edge mask, CSF referencing)",
    )
    parser.add_argument(
        "--noise",
        type=Path,
        metavar="PATH",
        help="standard deviation of FIELD (3D NIfTI, same unit as FIELD: ppm or Hz), e.g. "
        "the echo fit's noise map: data weights 1/noise for the stages whose recipe sets "
        "data_weights = true",
    )
    parser.add_argument(
        "--reference-mask",
        type=Path,
        metavar="PATH",
        help="reference region (3D NIfTI mask) for the recipe's [reference] algorithm = 'mask'",
    )
    parser.add_argument(
        "--pipeline",
        default="default",
        metavar="NAME|PATH.toml",
        help="algorithm recipe: a built-in name ("
        + ", ".join(builtin_recipes())
        + ") or a TOML file; its [background] (with --total), [inversion] and [reference] "
        "stages run. Default: %(default)s",
    )
    parser.add_argument(
        "--b0-direction",
        type=_finite_float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="direction of B0 in world coordinates (the NIfTI RAS+ frame of FIELD's "
        "affine, i.e. the scanner's axes; any length), converted to voxel space with the "
        "affine. Default: 0 0 1 (the scanner's z axis), which is what the participant "
        "level assumes",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages (debugging details)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


# --------------------------------------------------------------------------------- reading
def _read(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """A 3D NIfTI volume (float32, NIfTI scaling applied), its affine and header."""
    import nibabel as nb

    from qsm_bids.bids.load import MIN_VOXELS_PER_AXIS

    path = Path(path)
    if not path.is_file():
        raise QSMInputError(path, f"{what} not found")
    try:
        img = nb.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3 or min(shape) < MIN_VOXELS_PER_AXIS:
            raise QSMInputError(
                path,
                f"{what} must be a 3D volume (at least {MIN_VOXELS_PER_AXIS} voxels per "
                f"axis), found shape {tuple(img.shape)}",
            )
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except QSMInputError:
        raise
    except Exception as exc:  # not NIfTI, truncated gzip, bad header, ...
        raise QSMInputError(
            path,
            f"cannot read the {what} as NIfTI (corrupt or truncated?): {type(exc).__name__}: {exc}",
        ) from exc
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def _same_grid(path: Path, what: str, data: np.ndarray, affine: np.ndarray, ref) -> None:
    """:func:`qsm_bids.bids.load.check_grid` against FIELD's grid."""
    from qsm_bids.bids.load import check_grid

    ref_path, ref_data, ref_affine = ref
    check_grid(
        path,
        data.shape,
        affine,
        (ref_path, ref_data.shape, ref_affine),
        what=what,
        why="every image must be on FIELD's grid",
    )


def _non_finite(path: Path, what: str, data: np.ndarray, mask: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(data[mask])))
    if bad:
        raise QSMInputError(path, f"{what} has {bad} non-finite (NaN/Inf) voxel(s) inside the mask")


def _check_output(output: Path, inputs: list[Path]) -> None:
    if not output.name.endswith((".nii.gz", ".nii")):
        raise QSMInputError(output, "OUTPUT must be a NIfTI file name ending in .nii.gz or .nii")
    resolved = output.resolve()
    for path in inputs:
        if path.resolve() == resolved:
            raise QSMInputError(output, "OUTPUT is one of the input files; give a new name")
    if output.exists() and not output.is_file():
        raise QSMInputError(output, "OUTPUT exists and is not a file")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise QSMInputError(output, f"cannot create it: {parent} is not a folder")


# ------------------------------------------------------------------------------------ run
def run_invert(args: argparse.Namespace) -> int:
    """Run ``qsm-bids invert`` with parsed ``args`` (from :func:`add_invert_arguments`).

    Returns the exit code: 0 on success, 1 when the processing failed, 2 on bad input or
    options (a one-line message naming the file and the problem goes to stderr; nothing
    is written).
    """
    try:
        return _run(args)
    except QSMInputError as exc:
        print(f"qsm-bids invert: error: {exc}", file=sys.stderr)
        return 2


def _check_options(args: argparse.Namespace) -> None:
    """The checks that need no file: unit, field strength, B0 direction, output name."""
    from qsm_bids.bids.layout import _FIELD_RANGE_T

    field = Path(args.field)
    if args.unit is None:
        raise QSMInputError(
            field, "the unit of the field map is not given: pass --unit ppm or --unit Hz"
        )
    if args.unit == "Hz" and args.field_strength is None:
        raise QSMInputError(
            field,
            "the field map is in Hz: pass --field-strength T (B0 in tesla) to convert it to ppm",
        )
    lo, hi = _FIELD_RANGE_T
    if args.field_strength is not None and not lo <= args.field_strength <= hi:
        raise QSMInputError(
            field,
            f"--field-strength {args.field_strength:g} T is not a plausible B0 "
            f"({lo:g}-{hi:g} T); give it in tesla",
        )
    if args.b0_direction is not None and not np.linalg.norm(args.b0_direction) > 0:
        raise QSMInputError(None, "--b0-direction must not be 0 0 0")
    _check_output(Path(args.output), _input_paths(args))


def _optional_paths(args: argparse.Namespace) -> dict[str, Path | None]:
    return {
        "magnitude": args.magnitude,
        "noise": args.noise,
        "reference mask": args.reference_mask,
    }


def _input_paths(args: argparse.Namespace) -> list[Path]:
    """FIELD, MASK and the optional images given, in that order (the sidecar's Sources)."""
    given = [Path(p) for p in _optional_paths(args).values() if p is not None]
    return [Path(args.field), Path(args.mask), *given]


def _read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Read and check every image: 3D, on FIELD's grid, finite inside a non-empty mask.

    Returns ``field`` (float32, the unit of ``--unit``), ``affine``, ``header``, ``mask``
    (bool) and ``magnitude``, ``noise``, ``region`` (arrays or None).
    """
    field_path, mask_path = Path(args.field), Path(args.mask)
    field, affine, header = _read(field_path, "field map")
    ref = (field_path, field, affine)
    mask_data, mask_affine, _ = _read(mask_path, "mask")
    _same_grid(mask_path, "the mask", mask_data, mask_affine, ref)
    mask = mask_data > 0
    if not mask.any():
        raise QSMInputError(mask_path, "the mask is empty (no voxel > 0)")
    _non_finite(field_path, "the field map", field, mask)
    out: dict[str, Any] = {"field": field, "affine": affine, "header": header, "mask": mask}
    for what, path in _optional_paths(args).items():
        data = None
        if path is not None:
            data, aff, _ = _read(Path(path), what)
            _same_grid(Path(path), f"the {what}", data, aff, ref)
            if what == "reference mask":
                data = data > 0
                if not np.any(data & mask):
                    raise QSMInputError(path, "the reference mask has no voxel in MASK")
            else:
                _non_finite(Path(path), f"the {what}", data, mask)
        out["region" if what == "reference mask" else what] = data
    return out


def _sidecar(
    args: argparse.Namespace, provenance: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    """The Chimap sidecar: the participant level's fields (Units, SkullStripped, Sources,
    MagneticFieldStrength, FieldStrengthSource, B0Direction, Pipeline, SoftwareVersion,
    ProcessingNotes, Stages) and what this command adds (the input's unit and kind, B0 in
    world coordinates and where it came from, the input files)."""
    from qsm_bids.bids.derivatives import sidecar_for

    world = np.asarray((0.0, 0.0, 1.0) if args.b0_direction is None else args.b0_direction)
    fs = args.field_strength
    side: dict[str, Any] = {} if fs is None else {"MagneticFieldStrength": fs}
    side["FieldStrengthSource"] = "--field-strength" if fs is not None else "not given"
    side["B0Direction"] = provenance["B0Direction"]
    side["B0DirectionWorld"] = [float(v) for v in world / np.linalg.norm(world)]
    side["B0DirectionSource"] = (
        "the NIfTI affine (world z, the scanner's B0 axis, in voxel space)"
        if args.b0_direction is None
        else "--b0-direction (world RAS+ axes, converted with the affine)"
    )
    side["Pipeline"] = provenance["Pipeline"]
    side["SoftwareVersion"] = provenance["SoftwareVersion"]
    side["InputFieldUnit"] = args.unit
    side["InputFieldType"] = "total" if args.total else "local"
    side["InputFiles"] = {
        "field": str(Path(args.field).resolve()),
        "mask": str(Path(args.mask).resolve()),
        **{
            k.replace(" ", "_"): str(Path(p).resolve())
            for k, p in _optional_paths(args).items()
            if p is not None
        },
    }
    # the rest of invert_field's record (voxel size, feedback passes, ...), not its timing
    for key, value in provenance.items():
        if key not in side and key not in ("ProcessingNotes", "Stages", "Seconds"):
            side[key] = value
    notes = [*notes, *provenance.get("ProcessingNotes", [])]
    if notes:
        side["ProcessingNotes"] = notes
    side["Stages"] = provenance["Stages"]
    return sidecar_for(
        None, units="ppm", skull_stripped=True, provenance=side, sources=_input_paths(args)
    )


def _write(output: Path, chi: np.ndarray, affine: np.ndarray, header, sidecar: dict) -> None:
    """The image first, then its sidecar (a sidecar implies its image), each atomically;
    a sidecar that cannot be written takes the new image with it."""
    from qsm_bids.bids.derivatives import sidecar_path, write_json_atomic, write_nifti_atomic

    written = False
    try:
        write_nifti_atomic(output, chi, affine, header=header, dtype=np.float32)
        written = True
        write_json_atomic(sidecar_path(output), sidecar)
    except OSError as exc:
        if written:
            output.unlink(missing_ok=True)
        raise QSMInputError(output, f"cannot write the map: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    from qsm_bids.core.kernels import b0_direction, voxel_sizes
    from qsm_bids.core.physics import hz_to_ppm
    from qsm_bids.invert import invert_field
    from qsm_bids.recipe import load_recipe

    _check_options(args)
    recipe = load_recipe(args.pipeline)
    if recipe["reference"].algorithm == "mask" and args.reference_mask is None:
        raise QSMInputError(
            Path(recipe.source), "the recipe's [reference] algorithm 'mask' needs --reference-mask"
        )
    data = _read_inputs(args)
    field, mask, affine, fs = data["field"], data["mask"], data["affine"], args.field_strength
    notes: list[str] = []
    n_bad = int(np.count_nonzero(~np.isfinite(field[~mask])))
    if n_bad:
        notes.append(
            f"{Path(args.field).name}: {n_bad} non-finite voxel(s) outside the mask set to 0"
        )
    field_ppm, noise_ppm = field, data["noise"]
    if args.unit == "Hz":
        # the participant level's arithmetic: the inversion converts the float32 field in
        # Hz to ppm; the background removal takes the Hz values themselves (converted in
        # float64 here, so that invert_field's conversion back gives the file's values)
        field_ppm = hz_to_ppm(field.astype(np.float64) if args.total else field, fs)
        noise_ppm = None if noise_ppm is None else hz_to_ppm(noise_ppm, fs)
    world = (0.0, 0.0, 1.0) if args.b0_direction is None else tuple(args.b0_direction)
    b0 = tuple(float(v) for v in b0_direction(affine, world))
    log.info(
        "inverting %s (%s%s) with the '%s' recipe; B0 in voxel space (%.3f, %.3f, %.3f)",
        args.field, args.unit, ", total field" if args.total else "", recipe.name, *b0,
    )  # fmt: skip
    try:
        chi, provenance = invert_field(
            field_ppm,
            mask,
            voxel_sizes(affine),
            b0,
            recipe,
            magnitude=data["magnitude"],
            noise_ppm=noise_ppm,
            total=args.total,
            field_strength=fs,
            reference_region=data["region"],
        )
    except Exception as exc:  # a numerical failure inside a stage: not the input's fault
        log.debug("invert failed", exc_info=True)
        print(
            f"qsm-bids invert: error: processing {args.field} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    for note in provenance.get("ProcessingNotes", []):
        log.warning("%s", note)
    output = Path(args.output)
    _write(output, chi, affine, data["header"], _sidecar(args, provenance, notes))
    log.info("wrote %s and its .json sidecar (%.1f s)", output, provenance["Seconds"])
    return 0
