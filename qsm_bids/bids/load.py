"""Check and load the images of one :class:`~qsm_bids.bids.layout.Run` into arrays.

Phase comes back as float32 radians in ``[-pi, pi)`` whatever its stored encoding
(see :func:`qsm_bids.core.phase.scale_phase_to_radians`; a NIfTI ``scl_slope`` /
``scl_inter`` is applied first, and noted); magnitude as float32. Real and imaginary parts
are converted to magnitude ``|re + i im|`` and phase ``angle(re + i im)``. A 4D file of every
echo and one 3D file per echo give the same :class:`RunData`.

Non-finite values (NaN/Inf, as some converters and skull-stripping tools write outside the
head): the voxels that are not finite in any echo or part are set to 0 in every echo and
part (magnitude 0 makes the masking treat them as background) and a note gives their
number per file. An image with no finite value, or whose finite values are all 0, is an
error.

:func:`validate_run` makes every data check that :func:`load_run` makes, reading each file
once without keeping it, so that a bad run is refused before any heavy work starts.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from qsm_bids.bids.layout import Run
from qsm_bids.core import kernels
from qsm_bids.core.phase import scale_phase_to_radians, wrap_to_pi
from qsm_bids.errors import QSMInputError

#: Tolerance on affine differences between echoes/parts (mm).
AFFINE_ATOL = 1e-4
#: Fewest voxels along each spatial axis of a 3D volume (fewer: a 2D image).
MIN_VOXELS_PER_AXIS = 3


@dataclass
class RunData:
    """The arrays of one run, ready for the numerics.

    Attributes
    ----------
    phase : (X, Y, Z, E) float32 ndarray
        Phase in radians, in ``[-pi, pi)``, echoes along the last axis.
    magnitude : (X, Y, Z, E) float32 ndarray or None
        Magnitude (arbitrary units, >= 0), or ``None`` for phase-only runs.
    affine : (4, 4) float64 ndarray
        Voxel-to-world (RAS+ mm) affine of the echo-1 phase image.
    header : nibabel.Nifti1Header
        Header of the echo-1 phase (or real) image, with the 3D shape of one echo (a
        template for writing outputs).
    voxel_size : tuple of 3 floats
        Voxel size in mm (:func:`qsm_bids.core.kernels.voxel_sizes`).
    b0_dir : (3,) float64 ndarray
        Unit B0 direction in voxel-index space (:func:`qsm_bids.core.kernels.b0_direction`).
    echo_times : tuple of float
        Echo times in s.
    field_strength : float
        Field strength in T.
    notes : list of str
        Provenance: how the phase was scaled (or computed from real/imaginary parts),
        NIfTI scaling applied, non-finite values replaced, phase-only, and the run's
        discovery warnings.
    field_strength_source : str, default ""
        The sidecar key ``field_strength`` came from (:attr:`Run.field_strength_source
        <qsm_bids.bids.layout.Run>`): ``"ImagingFrequency"`` or ``"MagneticFieldStrength"``.
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
    field_strength_source: str = ""


# --------------------------------------------------------------------------------------
# reading one file
# --------------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    """The nibabel image of ``path`` (header read, data not yet)."""
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
        return nib.load(str(path))
    except Exception as exc:  # bad magic, truncated header, gzip errors, ...
        raise QSMInputError(
            path, f"cannot read NIfTI image (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc


def _strip_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_shape(path: Path, shape: tuple[int, ...], n_volumes: int) -> tuple[int, ...]:
    """The 3D grid of a file that should hold ``n_volumes`` echoes (0: one 3D echo)."""
    shape = _strip_trailing(shape)
    if len(shape) < 3 or min(shape[:3]) < MIN_VOXELS_PER_AXIS:
        raise QSMInputError(
            path,
            f"is a 2D image (shape {shape}); QSM needs a 3D volume with at least "
            f"{MIN_VOXELS_PER_AXIS} voxels along each axis",
        )
    if n_volumes:
        if len(shape) != 4 or shape[3] != n_volumes:
            raise QSMInputError(
                path,
                f"expected a 4D image of {n_volumes} echoes (one per EchoTime of its sidecar) "
                f"but found shape {shape}",
            )
    elif len(shape) != 3:
        raise QSMInputError(
            path,
            f"expected a 3D volume but found shape {shape}; a file with an echo-<n> entity "
            "(or a single EchoTime) holds one echo. For a 4D file of every echo, drop the "
            "echo-<n> entity and list every echo time in EchoTime",
        )
    return shape[:3]


def _get_data(img: Any, path: Path) -> np.ndarray:
    """float32 data of a loaded image (NIfTI scaling applied), trailing singletons dropped."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip (EOFError), zlib.error, short file, ...
        raise QSMInputError(
            path, f"cannot read NIfTI image (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
    return data.reshape(_strip_trailing(data.shape))


def _scaling_note(img: Any, path: Path) -> str | None:
    """A note when the header's scl_slope/scl_inter change the stored values."""
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on loading
    slope = getattr(img.dataobj, "slope", None)
    inter = getattr(img.dataobj, "inter", None)
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if slope == 1.0 and inter == 0.0:
        return None
    return (
        f"{Path(path).name}: NIfTI scaling applied (value = stored * {slope:.6g} + "
        f"{inter:.6g}) before detecting the encoding"
    )


def _combine_scaling_notes(scaled: list[str]) -> list[str]:
    if not scaled:
        return []
    more = (
        f" (and {len(scaled) - 1} more phase files with NIfTI scaling)" if len(scaled) > 1 else ""
    )
    return [scaled[0] + more]


def check_grid(
    path: Path,
    shape: tuple,
    affine: np.ndarray,
    ref: tuple,
    *,
    what: str = "image",
    why: str = "every echo and part of a run must share one grid",
) -> None:
    """Raise :class:`QSMInputError` naming ``path`` unless its grid (``shape``, ``affine``
    within :data:`AFFINE_ATOL` mm) equals ``ref = (ref_path, ref_shape, ref_affine)``;
    ``what`` names the image and ``why`` ends the message."""
    ref_path, ref_shape, ref_aff = ref
    if shape != ref_shape:
        raise QSMInputError(
            path, f"{what} shape {shape} differs from {ref_shape} of {ref_path}; {why}"
        )
    if not np.allclose(affine, ref_aff, rtol=0.0, atol=AFFINE_ATOL):
        diff = float(np.max(np.abs(affine - ref_aff)))
        raise QSMInputError(
            path,
            f"{what} affine differs from that of {ref_path} (max difference {diff:.3g} mm); {why}",
        )


def _label(path: Path, volume: int | None) -> str:
    return f"{path.name}" + (f" (volume {volume}, 0-based)" if volume is not None else "")


def _check_values(vol: np.ndarray, path: Path, volume: int | None, what: str) -> np.ndarray:
    """Per-echo data checks; returns the non-finite voxel mask of ``vol``."""
    where = "" if volume is None else f"volume {volume} (0-based) of the 4D {what} image: "
    bad = ~np.isfinite(vol)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == vol.size:
        raise QSMInputError(path, f"{where}{what} image has no finite values (all NaN/Inf)")
    finite = vol[~bad] if n_bad else vol
    lo, hi = float(finite.min()), float(finite.max())
    if lo == 0.0 and hi == 0.0:
        raise QSMInputError(path, f"{where}{what} image is all zero ({vol.size} voxels)")
    if what == "phase" and lo == hi:
        raise QSMInputError(
            path, f"{where}phase image is constant ({lo:g}); it cannot be a phase image"
        )
    return bad


def _part_list(run: Run) -> list[tuple[str, tuple[Path, ...], tuple[int, ...]]]:
    """(what, files, volumes) of the run's primary and secondary parts."""
    if run.parts == "real-imag":
        names = ("real", "imaginary")
    else:
        names = ("phase", "magnitude")
    out = [(names[0], run.phase_files, run.phase_volumes)]
    if run.magnitude_files:
        out.append((names[1], run.magnitude_files, run.magnitude_volumes))
    return out


def _echo_sources(files: tuple[Path, ...], volumes: tuple[int, ...]) -> dict[Path, list]:
    """{file: [(echo index, volume index or None), ...]} in first-appearance order."""
    out: dict[Path, list] = {}
    for e, path in enumerate(files):
        out.setdefault(Path(path), []).append((e, volumes[e] if volumes else None))
    return out


def _stack_volumes(files: tuple[Path, ...], volumes: tuple[int, ...], run: Run) -> int:
    n = len(files)
    if len(run.echo_times) != n or (volumes and len(volumes) != n):
        raise QSMInputError(
            Path(files[0]) if files else None,
            f"run {run.name}: {n} files for {len(run.echo_times)} echo times",
        )
    return n


# --------------------------------------------------------------------------------------
# validation before heavy work
# --------------------------------------------------------------------------------------


def _open_on_grid(
    path: Path, echoes: list, ref: tuple | None
) -> tuple[Any, tuple[int, ...], int, tuple]:
    """Open one image of a run and check its shape, and its grid against ``ref`` (the first
    image's ``(path, shape, affine)``). Returns the image, its 3D shape, its number of
    volumes (0 for a 3D file) and ``ref`` (this image's grid when ``ref`` is None)."""
    img = _open(path)
    n_vol = len(echoes) if echoes[0][1] is not None else 0
    shape = _check_shape(path, img.shape, n_vol)
    aff = np.asarray(img.affine, dtype=np.float64)
    if ref is None:
        ref = (path, shape, aff)
    else:
        check_grid(path, shape, aff, ref)
    return img, shape, n_vol, ref


_T = TypeVar("_T")


def _io_threads() -> int:
    """Threads for reading images: ``QSM_BIDS_NUM_THREADS`` when set, else the usable
    cores; at most 4 (decompression, not the disk, is the limit)."""
    n = kernels.fft_workers()
    if n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, int(n or 1)))


def _read_ahead(
    items: Iterable[_T], read: Callable[[_T], np.ndarray]
) -> Iterator[tuple[_T, np.ndarray]]:
    """``(item, read(item))`` in order, with up to :func:`_io_threads` reads running ahead
    in threads (zlib releases the GIL, so gzipped NIfTI files decompress in parallel); at
    most that many arrays are held besides the one being used. A read's exception is
    raised when its item comes up."""
    items = list(items)
    n = _io_threads()
    if n == 1 or len(items) < 2:
        for item in items:
            yield item, read(item)
        return
    with ThreadPoolExecutor(max_workers=n) as pool:
        pending: deque = deque()
        todo = iter(items)
        for item in todo:
            pending.append((item, pool.submit(read, item)))
            if len(pending) == n:
                break
        while pending:
            item, future = pending.popleft()
            data = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield item, data
            del data


def validate_run(run: Run, *, read_data: bool = True) -> list[str]:
    """Check every file of a run before any heavy work starts.

    Headers: each file is a readable NIfTI image, 3D (or 4D with one volume per echo for a
    4D layout), not 2D, on the grid (shape and affine, 1e-4 mm) of the echo-1 phase
    image. Data (``read_data``; each distinct file is read once, a few ahead in threads, not
    kept): the file is not truncated; no echo is entirely non-finite or all zero; no
    phase echo is constant; the phase values fit a known encoding (the same detection as
    :func:`load_run`, over all echoes together).

    Parameters
    ----------
    run : Run
        A run from :func:`qsm_bids.bids.layout.find_runs`.
    read_data : bool, default True
        Also read the voxel data (costs one read of every file); ``False``: headers only.

    Returns
    -------
    list of str
        Notes on what loading will do (non-finite values to be set to 0, NIfTI scaling);
        the run is valid.

    Raises
    ------
    QSMInputError
        The first problem found, naming the file.
    """
    notes: list[str] = []
    ref: tuple | None = None
    images: list[tuple[str, Path, list, Any, tuple[int, ...]]] = []
    for what, files, volumes in _part_list(run):
        _stack_volumes(files, volumes, run)
        for path, echoes in _echo_sources(files, volumes).items():
            img, shape, _, ref = _open_on_grid(path, echoes, ref)
            images.append((what, path, echoes, img, shape))
    if not read_data:
        return notes

    stats: list[tuple[float, float, float | None]] = []
    scaled: list[str] = []
    any_bad = False
    for (what, path, echoes, img, _), data in _read_ahead(images, lambda i: _get_data(i[3], i[1])):
        n_bad = 0
        for _, vol_idx in echoes:
            vol = data if vol_idx is None else data[..., vol_idx]
            bad = _check_values(vol, path, vol_idx, what)
            n_bad += int(np.count_nonzero(bad))
            if what == "phase":
                finite = vol[~bad] if bad.any() else vol
                nonint = finite[finite != np.round(finite)]
                stats.append(
                    (
                        float(finite.min()),
                        float(finite.max()),
                        float(nonint[0]) if nonint.size else None,
                    )
                )
        del data
        if n_bad:
            any_bad = True
            notes.append(f"{path.name}: {n_bad} non-finite (NaN/Inf) values will be set to 0")
        if what == "phase" and (note := _scaling_note(img, path)):
            scaled.append(note)
    notes += _combine_scaling_notes(scaled)
    if stats:
        # the encoding depends only on min, max and whether all values are integers
        summary = [min(s[0] for s in stats), max(s[1] for s in stats)]
        summary += [s[2] for s in stats if s[2] is not None][:1]
        if any_bad:  # load_run sets those voxels to 0 before the detection
            summary.append(0.0)
        try:
            scale_phase_to_radians(np.asarray(summary, np.float32), units=run.phase_units)
        except ValueError as exc:
            raise QSMInputError(run.phase_files[0], f"{exc} (phase of run {run.name})") from exc
    return notes


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def _load_part(
    what: str,
    files: tuple[Path, ...],
    volumes: tuple[int, ...],
    run: Run,
    ref: tuple | None,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, tuple, Any]:
    """(X, Y, Z, E) float32 array of one part, its non-finite mask, the grid, a header."""
    n = _stack_volumes(files, volumes, run)
    out: np.ndarray | None = None
    bad_all: np.ndarray | None = None
    header = None
    scaled: list[str] = []
    opened = []
    for path, echoes in _echo_sources(files, volumes).items():
        first = ref is None
        img, shape, n_vol, ref = _open_on_grid(path, echoes, ref)
        if first:
            header = img.header.copy()
            if n_vol:
                header.set_data_shape(shape)
        if what == "phase" and (note := _scaling_note(img, path)):
            scaled.append(note)
        opened.append((path, echoes, img, shape, n_vol))
    for (path, echoes, _, shape, n_vol), data in _read_ahead(
        opened, lambda o: _get_data(o[2], o[0])
    ):
        if n_vol == n and [v for _, v in echoes] == list(range(n)):
            out = data  # one 4D file of every echo in order: no copy
        if out is None:
            out = np.empty((*shape, n), dtype=np.float32)
        n_bad = 0
        for e, vol_idx in echoes:
            vol = data if vol_idx is None else data[..., vol_idx]
            bad = _check_values(vol, path, vol_idx, what)
            if bad.any():
                n_bad += int(np.count_nonzero(bad))
                bad_all = bad if bad_all is None else (bad_all | bad)
            if out is not data:
                out[..., e] = vol
        del data
        if n_bad:
            notes.append(
                f"{path.name}: {n_bad} non-finite (NaN/Inf) values; those voxels set to 0 "
                "in every echo and part"
            )
    notes += _combine_scaling_notes(scaled)
    assert out is not None and ref is not None
    if bad_all is None:
        bad_all = np.zeros(ref[1], dtype=bool)
    return out, bad_all, ref, header


def load_run(run: Run) -> RunData:
    """Load and check the phase (and magnitude) images of a run.

    Parameters
    ----------
    run : Run
        A run from :func:`qsm_bids.bids.layout.find_runs` (3D files per echo or 4D files;
        magnitude/phase or real/imaginary parts).

    Returns
    -------
    RunData
        Phase in rad (float32, all echoes scaled with one mapping, or ``angle(re + i im)``),
        magnitude (float32, >= 0) or ``None``, the echo-1 phase affine and (3D) header,
        voxel size (mm), B0 direction, echo times (s), field strength (T) and provenance
        notes.

    Raises
    ------
    QSMInputError
        A file is missing, corrupt or truncated; an image is 2D, or not 3D (4D with one
        volume per echo for a 4D layout); echoes or parts differ in shape or affine (by
        more than 1e-4 mm); an echo has no finite value or is all zero; a phase echo is
        constant; the phase values fit no known phase encoding.
    """
    notes: list[str] = list(run.warnings)
    parts = _part_list(run)
    what, files, volumes = parts[0]
    first, bad, ref, header = _load_part(what, files, volumes, run, None, notes)
    second = None
    if len(parts) > 1:
        what2, files2, volumes2 = parts[1]
        second, bad2, _, _ = _load_part(what2, files2, volumes2, run, ref, notes)
        bad |= bad2
    if bad.any():
        first[bad] = 0.0
        if second is not None:
            second[bad] = 0.0

    magnitude = None
    if run.parts == "real-imag":
        assert second is not None
        magnitude = np.hypot(first, second).astype(np.float32, copy=False)
        phase = wrap_to_pi(np.arctan2(second, first))
        notes.append(
            "magnitude and phase computed from the real and imaginary images: "
            "|re + i im| and angle(re + i im) (rad)"
        )
    else:
        magnitude = second
        if magnitude is not None:
            if float(magnitude.min()) < 0:
                notes.append("magnitude has negative values; their absolute value is used")
                np.abs(magnitude, out=magnitude)
        else:
            notes.append(
                "no magnitude: masking from phase quality is degraded and echoes are combined "
                "without magnitude weighting"
            )
        try:
            # one mapping for all echoes
            phase, how = scale_phase_to_radians(first, units=run.phase_units)
        except ValueError as exc:
            raise QSMInputError(run.phase_files[0], f"{exc} (phase of run {run.name})") from exc
        del first
        notes.append(how)

    ref_aff = ref[2]
    return RunData(
        phase=phase,
        magnitude=magnitude,
        affine=ref_aff,
        header=header,
        voxel_size=kernels.voxel_sizes(ref_aff),
        b0_dir=kernels.b0_direction(ref_aff),
        echo_times=tuple(float(t) for t in run.echo_times),
        field_strength=float(run.field_strength),
        notes=notes,
        field_strength_source=run.field_strength_source,
    )
