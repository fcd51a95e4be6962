"""Tests of derivative naming and atomic writing (qsm_bids.bids.derivatives)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm_bids.bids import derivatives as deriv
from qsm_bids.bids.derivatives import (
    BIDSIGNORE,
    README_TITLE,
    derivative_path,
    derivative_uri,
    detect_container,
    sidecar_for,
    sidecar_path,
    write_bidsignore,
    write_dataset_description,
    write_json_atomic,
    write_nifti_atomic,
    write_readme,
)
from qsm_bids.bids.layout import Run

AFFINE = np.array(
    [[-0.9, 0.05, 0, 90.0], [0, 1.0, 0.1, -120.0], [0, -0.08, 1.4, -60.0], [0, 0, 0, 1]]
)


def make_run(root: Path = Path("/data/ds"), sub="01", ses=None, acq=None, run=None, **extra):
    ents = {"sub": sub}
    for k, v in (("ses", ses), ("acq", acq), *extra.items(), ("run", run)):
        if v is not None:
            ents[k] = v
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    prefix = "_".join(f"{k}-{v}" for k, v in ents.items())
    phase = tuple(folder / f"{prefix}_echo-{e}_part-phase_MEGRE.nii.gz" for e in (1, 2))
    mag = tuple(folder / f"{prefix}_echo-{e}_part-mag_MEGRE.nii.gz" for e in (1, 2))
    return Run(
        subject=sub,
        session=ses,
        acquisition=acq,
        run=run,
        suffix="MEGRE",
        phase_files=phase,
        magnitude_files=mag,
        echo_times=(0.005, 0.01),
        field_strength=3.0,
        entities=ents,
    )


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, "sub-01/anat/sub-01_Chimap.nii.gz"),
        ({"ses": "A"}, "sub-01/ses-A/anat/sub-01_ses-A_Chimap.nii.gz"),
        ({"acq": "x"}, "sub-01/anat/sub-01_acq-x_Chimap.nii.gz"),
        ({"run": "1"}, "sub-01/anat/sub-01_run-1_Chimap.nii.gz"),
        (
            {"ses": "A", "acq": "x", "run": "01"},
            "sub-01/ses-A/anat/sub-01_ses-A_acq-x_run-01_Chimap.nii.gz",
        ),
        (
            {"ses": "A", "rec": "norm", "run": "2"},
            "sub-01/ses-A/anat/sub-01_ses-A_rec-norm_run-2_Chimap.nii.gz",
        ),
    ],
)
def test_derivative_names(kw, expected):
    out = Path("/out")
    assert derivative_path(out, make_run(**kw), "Chimap") == out / expected


def test_derivative_space_desc_extension_order():
    r = make_run(ses="A", acq="x", run="1")
    p = derivative_path(Path("/o"), r, "mask", desc="brain", space="MNI152NLin2009cAsym")
    assert p.name == "sub-01_ses-A_acq-x_run-1_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    p = derivative_path(Path("/o"), r, "Chimap", desc="romeo", extension=".json")
    assert p.name == "sub-01_ses-A_acq-x_run-1_desc-romeo_Chimap.json"
    assert "echo" not in p.name and "part" not in p.name
    # a Run without an entities dict still names correctly
    bare = Run("02", "B", None, "3", "MEGRE", (), (), (0.01,), 3.0)
    assert bare.name == "sub-02_ses-B_run-3"
    assert derivative_path(Path("/o"), bare, "R2starmap") == Path(
        "/o/sub-02/ses-B/anat/sub-02_ses-B_run-3_R2starmap.nii.gz"
    )
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_path(Path("/o"), r, "Chimap", desc="bad_desc")
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_path(Path("/o"), r, "Chi-map")


def test_sidecar_path():
    assert sidecar_path(Path("/a/x_Chimap.nii.gz")) == Path("/a/x_Chimap.json")
    assert sidecar_path(Path("/a/x_mask.nii")) == Path("/a/x_mask.json")


# --------------------------------------------------------------------------------------
# atomic writing
# --------------------------------------------------------------------------------------


def test_write_nifti_roundtrip_and_header(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(0, 0.1, (12, 14, 10)).astype(np.float32)
    # a source header like dcm2niix's int16 phase: slope 2, intercept -4096, codes 1/1
    src = nib.Nifti1Image(np.zeros((12, 14, 10), np.int16), AFFINE)
    src.header.set_slope_inter(2.0, -4096.0)
    src.set_sform(AFFINE, code=2)
    src.set_qform(AFFINE, code=1)
    path = tmp_path / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    out = write_nifti_atomic(path, data, AFFINE, header=src.header)
    assert out == path and _listing(path.parent) == ["sub-01_Chimap.nii.gz"]
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)  # no scaling
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_sform(), AFFINE)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")


def test_write_mask_uint8_default_codes(tmp_path):
    mask = np.zeros((12, 14, 10), bool)
    mask[3:8, 4:9, 2:7] = True
    path = write_nifti_atomic(tmp_path / "m_mask.nii.gz", mask, AFFINE)
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask.astype(np.uint8))
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    labels = write_nifti_atomic(tmp_path / "l.nii", mask * 3, AFFINE, dtype=np.uint8)
    assert nib.load(labels).get_data_dtype() == np.uint8


def test_sidecar_written_after_image(tmp_path, monkeypatch):
    order = []
    real_replace = os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(deriv.os, "replace", spy)
    path = tmp_path / "sub-01_Chimap.nii.gz"
    write_nifti_atomic(path, np.ones((4, 5, 6)), np.eye(4), sidecar={"Units": "ppm"})
    assert order == ["sub-01_Chimap.nii.gz", "sub-01_Chimap.json"]
    assert json.loads((tmp_path / "sub-01_Chimap.json").read_text()) == {"Units": "ppm"}
    assert _listing(tmp_path) == ["sub-01_Chimap.json", "sub-01_Chimap.nii.gz"]


def test_crash_before_rename_leaves_nothing(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(deriv.os, "replace", boom)
    path = tmp_path / "sub-01_Chimap.nii.gz"
    with pytest.raises(OSError, match="simulated crash"):
        write_nifti_atomic(path, np.ones((4, 5, 6)), np.eye(4), sidecar={"Units": "ppm"})
    assert _listing(tmp_path) == []  # no final file, no temp file, no sidecar
    with pytest.raises(OSError, match="simulated crash"):
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert _listing(tmp_path) == []


def test_crash_keeps_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "x_Chimap.nii.gz"
    write_nifti_atomic(path, np.ones((4, 5, 6)), np.eye(4))
    monkeypatch.setattr(deriv.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        write_nifti_atomic(path, np.zeros((4, 5, 6)), np.eye(4))
    assert np.all(nib.load(path).get_fdata() == 1)
    assert _listing(tmp_path) == ["x_Chimap.nii.gz"]


def test_write_json_numpy_types(tmp_path):
    p = write_json_atomic(
        tmp_path / "a" / "b.json",
        {"x": np.float32(1.5), "v": np.arange(3), "t": (1, 2), "p": Path("/q"), "n": np.nan},
    )
    assert json.loads(p.read_text()) == {
        "x": 1.5,
        "v": [0, 1, 2],
        "t": [1, 2],
        "p": "/q",
        "n": None,
    }


# --------------------------------------------------------------------------------------
# dataset_description and sidecars
# --------------------------------------------------------------------------------------


def test_dataset_description(tmp_path, monkeypatch):
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "ds" / "derivatives" / "qsm_bids"
    src = tmp_path / "ds"
    path = write_dataset_description(
        out, version="1.2.3", container={"Type": "docker", "Tag": "qsm_bids:1.2.3"}, source_dir=src
    )
    d = json.loads(path.read_text())
    assert d["Name"] == "qsm_bids"
    assert d["BIDSVersion"] == "1.10.0"
    assert d["DatasetType"] == "derivative"
    gb = d["GeneratedBy"][0]
    assert gb["Name"] == "qsm_bids" and gb["Version"] == "1.2.3" and gb["CodeURL"]
    assert gb["Container"] == {"Type": "docker", "Tag": "qsm_bids:1.2.3"}
    assert d["DatasetLinks"] == {"raw": src.resolve().as_uri()}
    # an identical file is left alone (no rewrite), a different one replaced atomically
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime - 10**9, mtime - 10**9))
    write_dataset_description(
        out, version="1.2.3", container={"Type": "docker", "Tag": "qsm_bids:1.2.3"}, source_dir=src
    )
    assert path.stat().st_mtime_ns == mtime - 10**9
    write_dataset_description(out, version="2.0", container={}, source_dir=None)
    d = json.loads(path.read_text())
    assert d["GeneratedBy"][0]["Version"] == "2.0" and "DatasetLinks" not in d
    assert "Container" not in d["GeneratedBy"][0]
    assert _listing(out) == ["dataset_description.json"]


def test_dataset_description_carries_the_raw_datasets_terms(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "x",
                "Authors": ["A. B.", "C. D."],
                "License": "PDDL",
                "DatasetDOI": "doi:10.18112/openneuro.ds000001.v1",
            }
        )  # fmt: skip
    )
    d = deriv.dataset_description(version="1", container={}, source_dir=raw)
    assert d["Authors"] == ["A. B.", "C. D."] and d["License"] == "PDDL"
    assert d["SourceDatasets"] == [
        {"URL": "bids:raw:", "DOI": "doi:10.18112/openneuro.ds000001.v1"}
    ]
    assert "logs/CITATION.md" in d["HowToAcknowledge"]
    # a raw dataset without them: none invented
    (raw / "dataset_description.json").write_text("{}")
    d = deriv.dataset_description(version="1", container={}, source_dir=raw)
    assert "Authors" not in d and "License" not in d
    assert d["SourceDatasets"] == [{"URL": "bids:raw:"}]


def test_readme_written_updated_and_a_users_own_kept(tmp_path):
    path = write_readme(tmp_path)
    text = path.read_text()
    assert path.name == "README.md" and text.startswith(README_TITLE)
    assert "desc-total_fieldmap" in text and "*_xfm.*" in text
    path.write_text(README_TITLE + "\nold version\n")
    assert write_readme(tmp_path).read_text() == text  # ours: brought up to date
    path.write_text("# My study\n")
    assert write_readme(tmp_path).read_text() == "# My study\n"  # the user's: kept


def test_bidsignore_created_updated_and_user_lines_kept(tmp_path):
    path = write_bidsignore(tmp_path)
    lines = path.read_text().splitlines()
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns == [p for p, _ in BIDSIGNORE]
    # one comment (the reason) right above each pattern
    for pattern in patterns:
        assert lines[lines.index(pattern) - 1].startswith("# ")
    assert not any(p.endswith("/") for p in patterns)  # the validator skips no "dir/"
    # a file an older version wrote is brought up to date; the user's own line is kept
    path.write_text("logs/\ngroup/\nsub-*.html\nsub-*/figures/\nextra/*.txt\n")
    new = write_bidsignore(tmp_path).read_text().splitlines()
    assert "sub-*/figures/" not in new and "logs/" not in new
    assert [ln for ln in new if ln and not ln.startswith("#")] == [*patterns, "extra/*.txt"]
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    write_bidsignore(tmp_path)  # current: left untouched
    assert path.stat().st_mtime_ns == before - 10**9


def test_detect_container(tmp_path, monkeypatch):
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    assert detect_container(tmp_path) is None
    (tmp_path / ".dockerenv").touch()
    assert detect_container(tmp_path) == {"Type": "docker"}
    (tmp_path / ".dockerenv").unlink()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").touch()
    assert detect_container(tmp_path) == {"Type": "podman"}
    monkeypatch.setenv("SINGULARITY_CONTAINER", "/images/qsm_bids.sif")
    assert detect_container(tmp_path) == {"Type": "singularity", "URI": "/images/qsm_bids.sif"}
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/q.sif")
    assert detect_container(tmp_path) == {"Type": "apptainer", "URI": "/images/q.sif"}


def test_sidecar_for(tmp_path):
    r = make_run(root=tmp_path / "raw", ses="A", run="1")
    prov = {"QSMPipeline": {"unwrap": {"algorithm": "romeo"}}}
    s = sidecar_for(r, units="ppm", skull_stripped=True, provenance=prov)
    assert s["Units"] == "ppm" and s["SkullStripped"] is True
    assert s["Sources"] == [
        "bids:raw:sub-01/ses-A/anat/sub-01_ses-A_run-1_echo-1_part-phase_MEGRE.nii.gz",
        "bids:raw:sub-01/ses-A/anat/sub-01_ses-A_run-1_echo-2_part-phase_MEGRE.nii.gz",
        "bids:raw:sub-01/ses-A/anat/sub-01_ses-A_run-1_echo-1_part-mag_MEGRE.nii.gz",
        "bids:raw:sub-01/ses-A/anat/sub-01_ses-A_run-1_echo-2_part-mag_MEGRE.nii.gz",
    ]
    assert s["QSMPipeline"] == prov["QSMPipeline"]
    # masks: no Units/SkullStripped; explicit bids_dir and sources
    (tmp_path / "raw").mkdir()
    m = sidecar_for(r, sources=r.phase_files[:1], bids_dir=tmp_path / "raw")
    assert m == {"Sources": [s["Sources"][0]]}
    json.dumps(s)
    # Description; SpatialReference: a raw file as its BIDS URI, a template name as is
    d = sidecar_for(r, description="A mask", spatial_reference=r.phase_files[0])
    assert d["Description"] == "A mask" and d["SpatialReference"] == s["Sources"][0]
    t = sidecar_for(r, spatial_reference="MNI152NLin2009aSym")
    assert t["SpatialReference"] == "MNI152NLin2009aSym"
    assert derivative_uri(r, "mask", desc="brain") == (
        "bids::sub-01/ses-A/anat/sub-01_ses-A_run-1_desc-brain_mask.nii.gz"
    )
