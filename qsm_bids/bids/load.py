"""Load the images of one :class:`~qsm_bids.bids.layout.Run` into arrays.

Phase comes back as float32 radians in ``[-pi, pi)`` whatever its stored encoding
(see :func:`qsm_bids.core.phase.scale_phase_to_radians`); magnitude as float32.

Non-finite values (NaN/Inf, as some vendors and converters write outside the field of
view) are set to 0 in both phase and magnitude, and a note says how many. A phase of 0
with a magnitude of 0 is treated as background by the masking stage, so this is safe;
an image that is entirely non-finite is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids.bids.layout import Run
from qsm_bids.core import kernels
from qsm_bids.core.phase import scale_phase_to_radians
from qsm_bids.errors import QSMInputError

#: Tolerance on affine differences between echoes/parts (mm).
AFFINE_ATOL = 1e-4


@dataclass
class RunData:
    """The arrays of one run, ready for the numerics.

    Attributes
    ----------
    phase : (X, Y, Z, E) float32 ndarray
        Phase in radians, in ``[-pi, pi)``, echoes along the last axis.
    magnitude : (X, Y, Z, E) float32 ndarray or None
        Magnitude (arbitrary units), or ``None`` for phase-only runs.
    affine : (4, 4) float64 ndarray
        Voxel-to-world (RAS+ mm) affine of the echo-1 phase image.
    header : nibabel.Nifti1Header
        Header of the echo-1 phase image (a template for writing outputs).
    voxel_size : tuple of 3 floats
        Voxel size in mm (:func:`qsm_bids.core.kernels.voxel_sizes`).
    b0_dir : (3,) float64 ndarray
        Unit B0 direction in voxel-index space (:func:`qsm_bids.core.kernels.b0_direction`).
    echo_times : tuple of float
        Echo times in s.
    field_strength : float
        Field strength in T.
    notes : list of str
        Provenance: how the phase was scaled, non-finite values replaced, phase-only, and
        the run's discovery warnings.
    """

    phase: np.ndarray
    magnitude: np.ndarray | None
    affine: np.ndarray
    header: Any
    voxel_size: tuple[float, float, float]
    b0_dir: np.ndarray
    echo_times: tuple[float, ...]
    field_strength: float
    notes: list[str] = field(default_factory=list)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """(float32 3D data with scl_slope applied, affine, header) of one file."""
    import nibabel as nib

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise QSMInputError(
            path,
            "broken symbolic link (is this a DataLad/git-annex dataset whose content "
            "has not been retrieved? try `datalad get`)",
        )
    if not path.is_file():
        raise QSMInputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip (EOFError), bad header, zlib.error, ...
        raise QSMInputError(
            path, f"cannot read NIfTI image (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QSMInputError(
            path,
            f"expected a 3D volume but found shape {tuple(data.shape)}; 4D multi-echo files "
            "are not supported yet: store one _echo-<n>_ file per echo",
        )
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def _check_same_grid(
    path: Path, shape: tuple, affine: np.ndarray, ref_path: Path, ref_shape: tuple, ref_aff
) -> None:
    if shape != ref_shape:
        raise QSMInputError(
            path,
            f"image shape {shape} differs from {ref_shape} of {ref_path}; every echo and "
            "part of a run must share one grid",
        )
    if not np.allclose(affine, ref_aff, rtol=0.0, atol=AFFINE_ATOL):
        diff = float(np.max(np.abs(affine - ref_aff)))
        raise QSMInputError(
            path,
            f"affine differs from that of {ref_path} (max difference {diff:.3g}); every "
            "echo and part of a run must share one grid",
        )


def load_run(run: Run) -> RunData:
    """Load and check the phase (and magnitude) images of a run.

    Parameters
    ----------
    run : Run
        A run from :func:`qsm_bids.bids.layout.find_runs`.

    Returns
    -------
    RunData
        Phase in rad (float32, all echoes scaled with one mapping), magnitude (float32) or
        ``None``, the echo-1 phase affine and header, voxel size (mm), B0 direction, echo
        times (s), field strength (T) and provenance notes.

    Raises
    ------
    QSMInputError
        A file is missing, corrupt or truncated; an image is not 3D; echoes or parts differ
        in shape or affine (by more than 1e-4); an image has no finite value; the phase
        values fit no known phase encoding.
    """
    notes: list[str] = list(run.warnings)
    ref_path = Path(run.phase_files[0])
    ref_data, ref_aff, ref_hdr = _read(ref_path)
    shape = ref_data.shape
    n_echo = len(run.phase_files)

    phase = np.empty((*shape, n_echo), dtype=np.float32)
    phase[..., 0] = ref_data
    del ref_data
    for e, path in enumerate(run.phase_files[1:], start=1):
        data, aff, _ = _read(Path(path))
        _check_same_grid(Path(path), data.shape, aff, ref_path, shape, ref_aff)
        phase[..., e] = data

    magnitude = None
    if run.magnitude_files:
        magnitude = np.empty((*shape, n_echo), dtype=np.float32)
        for e, path in enumerate(run.magnitude_files):
            data, aff, _ = _read(Path(path))
            _check_same_grid(Path(path), data.shape, aff, ref_path, shape, ref_aff)
            bad = ~np.isfinite(data)
            if bad.all():
                raise QSMInputError(path, "magnitude image has no finite values")
            if bad.any():
                data[bad] = 0.0
                notes.append(f"{Path(path).name}: {int(bad.sum())} non-finite values set to 0")
            magnitude[..., e] = data
        if float(magnitude.min()) < 0:
            notes.append("magnitude has negative values; their absolute value is used")
            np.abs(magnitude, out=magnitude)
    else:
        notes.append(
            "no magnitude: masking from phase quality is degraded and echoes are combined "
            "without magnitude weighting"
        )

    try:
        # one mapping for all echoes; non-finite values become 0 (the description says so)
        phase, how = scale_phase_to_radians(phase, units=run.phase_units)
    except ValueError as exc:
        raise QSMInputError(ref_path, f"{exc} (phase of run {run.name})") from exc
    notes.append(how)

    return RunData(
        phase=phase,
        magnitude=magnitude,
        affine=ref_aff,
        header=ref_hdr,
        voxel_size=kernels.voxel_sizes(ref_aff),
        b0_dir=kernels.b0_direction(ref_aff),
        echo_times=tuple(float(t) for t in run.echo_times),
        field_strength=float(run.field_strength),
        notes=notes,
    )
