"""Write a 3D float map (e.g. a Chimap in ppm) as a classic MR Image Storage DICOM series.

Values are stored as int16 with RescaleSlope/RescaleIntercept chosen from the map's range (no
clipping, no blank slices), plus a RealWorldValueMappingSequence in ppm; the window is centred
on 0 with a width from robust percentiles. Geometry comes from the NIfTI affine (RAS+ -> LPS).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from qsm_bids.errors import QSMInputError

INT16_MAX = 32000

_IDENTITY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "FrameOfReferenceUID",
    "ReferringPhysicianName",
)


def _first_source_dicom(source: Path) -> pydicom.Dataset:
    if not source.is_dir():
        raise QSMInputError(source, "--source-dicom is not a folder")
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: look further
            continue
    raise QSMInputError(source, "no DICOM file found in the source folder")


def _bids_identity(nifti_path: Path) -> tuple[str, str | None]:
    sub = re.search(r"sub-([A-Za-z0-9]+)", nifti_path.name) or re.search(
        r"sub-([A-Za-z0-9]+)", str(nifti_path)
    )
    ses = re.search(r"ses-([A-Za-z0-9]+)", nifti_path.name)
    return (sub.group(1) if sub else "anonymous"), (ses.group(1) if ses else None)


def _sidecar(nifti_path: Path) -> dict:
    name = re.sub(r"\.nii(\.gz)?$", ".json", nifti_path.name)
    side = nifti_path.with_name(name)
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def choose_rescale(data: np.ndarray) -> tuple[float, float]:
    """Slope and intercept (ppm per stored unit, ppm) so int16 holds the map's whole range.

    Parameters
    ----------
    data : numpy.ndarray
        The map's finite values (ppm).

    Returns
    -------
    slope, intercept : float
        ``value = stored * slope + intercept``; the stored values lie in -32000..32000.
    """
    lo, hi = float(np.min(data)), float(np.max(data))
    intercept = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    slope = half / INT16_MAX if half > 0 else 1e-6
    # slope as a DS string (16 chars) must round-trip exactly
    slope = float(f"{slope:.10g}")
    intercept = float(f"{intercept:.10g}")
    return slope, intercept


def _window(data: np.ndarray) -> tuple[float, float]:
    """Window centre 0 ppm, width covering the 1st..99th percentile (at least 0.3 ppm)."""
    p1, p99 = np.percentile(data, [1, 99])
    half = max(abs(float(p1)), abs(float(p99)), 0.15)
    return 0.0, 2.0 * half


def _ds(value: float) -> str:
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def export_map(
    nifti_path: str | PathLike[str],
    output_dir: str | PathLike[str],
    *,
    source_dicom: str | PathLike[str] | None = None,
    series_description: str | None = None,
    series_number: int | None = None,
    units: str = "ppm",
) -> list[Path]:
    """Write a 3D map as one classic MR Image Storage file per slice.

    Parameters
    ----------
    nifti_path : path-like
        The 3D map (ppm for a Chimap).
    output_dir : path-like
        Folder to create (must not exist or be empty); written atomically.
    source_dicom : path-like, optional
        Folder of the source series; its patient/study identity and frame of reference are kept.
    series_description : str, optional
        Default: "QSM Chimap (ppm)" with the sidecar's algorithms.
    series_number : int, optional
        Default: the source's SeriesNumber + 1000 (or 1000).
    units : str
        Unit of the values (ppm).

    Returns
    -------
    list of pathlib.Path
        The written files, in slice order.

    Raises
    ------
    QSMInputError
        A missing or unreadable file, a map that is not 3D, no finite voxel.
    """
    nifti_path = Path(nifti_path)
    output_dir = Path(output_dir)
    if not nifti_path.is_file():
        raise QSMInputError(nifti_path, "map not found")
    try:
        img = nib.load(nifti_path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise QSMInputError(nifti_path, f"not a readable NIfTI image ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QSMInputError(nifti_path, f"expected a 3D map, got shape {data.shape}")
    finite = np.isfinite(data)
    if not finite.any():
        raise QSMInputError(nifti_path, "the map has no finite voxel")
    data = np.where(finite, data, 0.0)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise QSMInputError(output_dir, "output folder exists and is not empty")

    source = _first_source_dicom(Path(source_dicom)) if source_dicom is not None else None
    sidecar = _sidecar(nifti_path)

    slope, intercept = choose_rescale(data)
    stored = np.clip(np.rint((data - intercept) / slope), -32768, 32767).astype(np.int16)
    centre, width = _window(data)

    affine = np.asarray(img.affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0])
    m = lps @ affine[:3, :3]  # columns: steps along i, j, k in LPS (mm)
    origin = lps @ affine[:3, 3]
    di, dj, dk = (float(np.linalg.norm(m[:, a])) for a in range(3))
    # DICOM rows run along j, columns along i: row direction cosine = i axis
    row_cos = m[:, 0] / di
    col_cos = m[:, 1] / dj

    if series_description is None:
        stages = sidecar.get("Stages") or sidecar.get("QSMPipeline") or {}
        algos = [
            str(spec.get("Algorithm", spec.get("algorithm", "")))
            for spec in (stages.values() if isinstance(stages, dict) else [])
            if isinstance(spec, dict) and spec.get("Algorithm", spec.get("algorithm"))
        ]
        series_description = "QSM Chimap (ppm)" + (f" {'/'.join(algos)}" if algos else "")
    series_description = series_description[:64]
    now = _dt.datetime.now()
    series_uid = generate_uid()
    if source is not None:
        ident = {t: getattr(source, t) for t in _IDENTITY_TAGS if t in source}
        base_number = int(getattr(source, "SeriesNumber", 0) or 0)
    else:
        sub, ses = _bids_identity(nifti_path)
        ident = {
            "PatientName": sub,
            "PatientID": sub,
            "StudyInstanceUID": generate_uid(),
            "StudyID": (ses or "1")[:16],
            "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"),
            "FrameOfReferenceUID": generate_uid(),
        }
    ident.setdefault("FrameOfReferenceUID", generate_uid())
    if series_number is None:
        series_number = base_number + 1000 if source is not None else 1000

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dicom-export-", dir=output_dir.parent))
    written: list[Path] = []
    try:
        for k in range(data.shape[2]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"IM{k + 1:05d}.dcm"
            ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.SpecificCharacterSet = "ISO_IR 100"
            for tag, value in ident.items():
                setattr(ds, tag, value)
            ds.Modality = "MR"
            ds.ImageType = ["DERIVED", "SECONDARY", "QSM"]
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description
            ds.SeriesDate = now.strftime("%Y%m%d")
            ds.SeriesTime = now.strftime("%H%M%S")
            ds.ContentDate = ds.SeriesDate
            ds.ContentTime = ds.SeriesTime
            ds.Manufacturer = "qsm_bids"
            ds.InstanceNumber = k + 1
            pos = origin + k * m[:, 2]
            ds.ImagePositionPatient = [_ds(float(v)) for v in pos]
            ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [_ds(dj), _ds(di)]  # row spacing, column spacing
            ds.SliceThickness = _ds(dk)
            ds.SpacingBetweenSlices = _ds(dk)
            ds.SliceLocation = _ds(float(np.dot(pos, np.cross(row_cos, col_cos))))
            ds.Rows = data.shape[1]
            ds.Columns = data.shape[0]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleType = units.upper()[:16]
            ds.WindowCenter = _ds(centre)
            ds.WindowWidth = _ds(width)
            rwv = pydicom.Dataset()
            rwv.RealWorldValueFirstValueMapped = -32768
            rwv.RealWorldValueLastValueMapped = 32767
            rwv.RealWorldValueSlope = slope
            rwv.RealWorldValueIntercept = intercept
            rwv.LUTLabel = "QSM"
            rwv.LUTExplanation = f"magnetic susceptibility ({units})"
            unit = pydicom.Dataset()
            unit.CodeValue = units
            unit.CodingSchemeDesignator = "UCUM"
            unit.CodeMeaning = units
            rwv.MeasurementUnitsCodeSequence = Sequence([unit])
            ds.RealWorldValueMappingSequence = Sequence([rwv])
            # pixel rows follow j, columns follow i
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            path = tmp / name
            ds.save_as(path, enforce_file_format=True)
            written.append(output_dir / name)
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
