"""DICOM export of maps: round trip through pydicom and dcm2niix, identity, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from qsm_bids.cli.main import main
from qsm_bids.dicom.export import export_map

DCM2NIIX = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")


def _map(path: Path, affine: np.ndarray, shape=(12, 10, 6), seed=0, data=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if data is None:
        data = rng.normal(0, 0.05, shape)
        data[3, 4, 2] = 0.4
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return np.asarray(data, dtype=np.float32).astype(np.float64)


def _read(folder: Path) -> list[pydicom.Dataset]:
    return sorted(
        (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: d.InstanceNumber
    )


def _oblique() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 2.0, 3.0])
    aff[:3, 3] = [-20.0, 15.0, 7.5]
    return aff


@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_pydicom_and_dcm2niix(tmp_path: Path, oblique: bool) -> None:
    aff = _oblique() if oblique else np.diag([1.5, 2.0, 3.0, 1.0])
    if not oblique:
        aff[:3, 3] = [-10, 20, -5]
    src = tmp_path / "sub-01_Chimap.nii.gz"
    data = _map(src, aff)
    files = export_map(src, tmp_path / "dcm")
    assert len(files) == data.shape[2]
    dss = _read(tmp_path / "dcm")
    for k, ds in enumerate(dss):
        vals = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
        np.testing.assert_allclose(vals.T, data[:, :, k], atol=1e-3)
        ras = aff @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [-ras[0], -ras[1], ras[2]], atol=1e-4
        )
        assert ds.PatientID == "01"
        assert float(ds.WindowCenter) == 0.0
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run(
        [DCM2NIIX, "-o", str(out), "-f", "out", "-z", "n", str(tmp_path / "dcm")],
        check=True,
        capture_output=True,
    )
    back = nib.load(out / "out.nii")
    # dcm2niix may store the rows flipped: same grid, other voxel order; bring it back
    back = back.as_reoriented(
        nib.orientations.ornt_transform(
            nib.orientations.io_orientation(back.affine), nib.orientations.io_orientation(aff)
        )
    )
    assert back.shape == data.shape
    np.testing.assert_allclose(back.affine, aff, atol=1e-3)
    np.testing.assert_allclose(np.asarray(back.dataobj, dtype=np.float64), data, atol=1e-3)


def _source(folder: Path) -> pydicom.Dataset:
    folder.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("src", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P123"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyID = "42"
    ds.AccessionNumber = "ACC9"
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesNumber = 5
    ds.Modality = "MR"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    ds.save_as(folder / "src.dcm", enforce_file_format=True)
    return ds


def test_source_identity_kept(tmp_path: Path) -> None:
    src_ds = _source(tmp_path / "src")
    nii = tmp_path / "sub-01_Chimap.nii.gz"
    _map(nii, np.eye(4))
    export_map(nii, tmp_path / "dcm", source_dicom=tmp_path / "src")
    dss = _read(tmp_path / "dcm")
    for tag in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyID",
        "AccessionNumber",
        "FrameOfReferenceUID",
    ):
        assert getattr(dss[0], tag) == getattr(src_ds, tag), tag
    assert dss[0].SeriesInstanceUID != src_ds.SeriesInstanceUID
    assert dss[0].SeriesNumber != src_ds.SeriesNumber
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)


@pytest.mark.parametrize("kind", ["constant", "outlier"])
def test_no_blank_or_clipped(tmp_path: Path, kind: str) -> None:
    shape = (8, 8, 4)
    if kind == "constant":
        data = np.full(shape, 0.07)
    else:
        data = np.random.default_rng(1).normal(0, 0.05, shape)
        data[0, 0, 0] = 500.0
    nii = tmp_path / "m.nii.gz"
    data = _map(nii, np.eye(4), data=data)
    export_map(nii, tmp_path / "dcm")
    for k, ds in enumerate(_read(tmp_path / "dcm")):
        vals = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(vals.T, data[:, :, k], atol=1e-3 if kind == "constant" else 0.01)
    # the outlier stays (not clipped), and the window is robust (not blown up by it)
    assert float(ds.WindowWidth) < 1.0


def test_bad_input_exits_2(tmp_path: Path) -> None:
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), four)
    assert main(["dicom-export", str(four), str(tmp_path / "o1")]) == 2
    assert main(["dicom-export", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o2")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four.nii.gz"]


def test_cli_writes_series(tmp_path: Path) -> None:
    nii = tmp_path / "sub-02_ses-1_Chimap.nii.gz"
    data = _map(nii, np.eye(4))
    assert main(["dicom-export", str(nii), str(tmp_path / "dcm")]) == 0
    assert len(list((tmp_path / "dcm").glob("*.dcm"))) == data.shape[2]


def test_description_names_algorithms(tmp_path: Path) -> None:
    nii = tmp_path / "sub-03_Chimap.nii.gz"
    _map(nii, np.eye(4))
    side = {"Stages": {"unwrap": {"Algorithm": "laplacian"}, "inversion": {"Algorithm": "tkd"}}}
    (tmp_path / "sub-03_Chimap.json").write_text(json.dumps(side))
    export_map(nii, tmp_path / "dcm")
    desc = _read(tmp_path / "dcm")[0].SeriesDescription
    assert desc.startswith("QSM Chimap (ppm)") and "laplacian" in desc and "tkd" in desc
