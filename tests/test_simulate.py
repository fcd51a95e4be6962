"""Tests of the built-in head phantom, the forward model and the BIDS dataset simulator."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm_bids.core.kernels import b0_direction
from qsm_bids.core.phase import wrap_to_pi
from qsm_bids.core.physics import CHI_AIR_PPM, ppm_to_hz
from qsm_bids.simulate import (
    HeadPhantom,
    make_head_phantom,
    make_subject,
    simulate_acquisition,
    simulate_dataset,
)
from qsm_bids.simulate.forward import dipole_fields
from qsm_bids.simulate.phantom import CHI_PPM, LABEL_NAMES

NAME_TO_LABEL = {v: k for k, v in LABEL_NAMES.items()}


@pytest.fixture(scope="module")
def phantom1() -> HeadPhantom:
    return make_head_phantom(1.0)


@pytest.fixture(scope="module")
def phantom3() -> HeadPhantom:
    return make_head_phantom(3.0)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sim")
    kw = dict(
        subjects=2,
        resolution_mm=3.0,
        oblique_deg=15.0,
        phase_format="integer",
        seed=3,
        phantom="ideal",
    )
    a = simulate_dataset(root / "a", **kw)
    b = simulate_dataset(root / "b", **kw)
    return a, b


def _median(p: HeadPhantom, name: str) -> float:
    sel = p.labels == NAME_TO_LABEL[name]
    assert sel.sum() > 0, name
    return float(np.median(p.chi[sel]))


def test_phantom_region_values_1mm(phantom1):
    p = phantom1
    assert p.chi.dtype == np.float32 and p.labels.dtype == np.int16
    assert p.affine[0, 0] == 1.0 and p.voxel_size == (1.0, 1.0, 1.0)
    required = {
        "background",
        "scalp",
        "skull",
        "csf",
        "gm",
        "wm",
        "caudate",
        "putamen",
        "pallidum",
        "thalamus",
        "substantia_nigra",
        "red_nucleus",
        "vein",
        "air_sinus",
    }
    assert required <= set(p.label_names.values())
    # constant-valued regions are exact at 1 mm
    for name in (
        "caudate",
        "putamen",
        "pallidum",
        "thalamus",
        "substantia_nigra",
        "red_nucleus",
        "vein",
        "skull",
        "scalp",
        "air_sinus",
        "background",
    ):
        assert _median(p, name) == pytest.approx(CHI_PPM[NAME_TO_LABEL[name]], abs=1e-6), name
    assert _median(p, "pallidum") == pytest.approx(0.131, abs=1e-6)
    assert _median(p, "air_sinus") == pytest.approx(CHI_AIR_PPM)
    # tissue mixtures from the template fractions
    assert _median(p, "gm") == pytest.approx(0.015, abs=0.004)
    assert _median(p, "wm") == pytest.approx(-0.030, abs=0.004)
    assert _median(p, "csf") == pytest.approx(0.0, abs=0.004)
    # masks
    skull = p.labels == NAME_TO_LABEL["skull"]
    assert not (p.brain_mask & skull).any()
    assert not (p.brain_mask & (p.labels == NAME_TO_LABEL["scalp"])).any()
    assert (p.brain_mask <= p.head_mask).all()
    vol_ml = p.brain_mask.sum() * 1e-3
    assert 1200 < vol_ml < 2100
    # ventricles: CSF inside the brain mask
    assert ((p.labels == NAME_TO_LABEL["csf"]) & p.brain_mask).sum() * 1e-3 > 10
    # proton density: CSF > GM > WM, bone and air ~ 0
    m = {n: float(p.m0[p.labels == NAME_TO_LABEL[n]].mean()) for n in ("csf", "gm", "wm")}
    assert m["csf"] > m["gm"] > m["wm"]
    assert float(p.m0[skull].mean()) < 0.1 and float(p.m0[p.labels == 0].max()) == 0.0
    # R2* at 3 T
    r2 = float(np.median(p.r2star[p.labels == NAME_TO_LABEL["pallidum"]]))
    assert 35 < r2 < 50


def test_phantom_2mm_and_field_strength():
    p3 = make_head_phantom(2.0)
    p7 = make_head_phantom(2.0, field_strength_t=7.0)
    assert p3.voxel_size == (2.0, 2.0, 2.0)
    # partial volume at 2 mm, but the deep grey values stay close
    for name in ("caudate", "putamen", "pallidum", "thalamus"):
        assert _median(p3, name) == pytest.approx(CHI_PPM[NAME_TO_LABEL[name]], rel=0.2), name
    np.testing.assert_array_equal(p3.chi, p7.chi)
    ratio = np.median(p7.r2star[p3.brain_mask] / np.maximum(p3.r2star[p3.brain_mask], 1e-3))
    assert 1.8 < ratio < 2.2


def test_dipole_field_of_sphere_in_air():
    # A water sphere (chi 0) in air: outside, (dchi/3)(a/r)^3(3cos^2-1) with dchi = -9.4 ppm;
    # inside, zero (Lorentz-corrected).
    n, a = 64, 12.0
    x = np.arange(n) - n / 2
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    chi = np.where(r <= a, 0.0, CHI_AIR_PPM).astype(np.float32)
    (field,) = dipole_fields([chi - CHI_AIR_PPM], (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    c = n // 2
    expected_z = -CHI_AIR_PPM / 3 * (a / 20.0) ** 3 * 2  # on the B0 axis, r = 20
    expected_x = -CHI_AIR_PPM / 3 * (a / 20.0) ** 3 * -1  # in the equatorial plane
    assert field[c, c, c + 20] == pytest.approx(expected_z, rel=0.05)
    assert field[c + 20, c, c] == pytest.approx(expected_x, rel=0.05)
    assert abs(float(np.median(field[r < a - 3]))) < 0.02 * abs(expected_z)


def test_noise_free_phase_matches_model(phantom3):
    tes = (0.003, 0.010, 0.017)
    acq = simulate_acquisition(phantom3, echo_times_s=tes, snr=float("inf"), rng=0)
    assert acq.phase.shape == (*phantom3.shape, 3) and acq.magnitude.shape == acq.phase.shape
    assert acq.phase.min() >= -np.pi and acq.phase.max() < np.pi
    assert np.ptp(acq.phase0) > 1.0  # a smooth offset of a couple of rad
    sig = phantom3.m0 > 1e-3
    for n, te in enumerate(tes):
        model = wrap_to_pi(acq.phase0 + 2 * np.pi * acq.total_field_hz * te)
        diff = np.angle(np.exp(1j * (acq.phase[..., n] - model)))
        assert np.abs(diff[sig]).max() < 1e-3
        mag = phantom3.m0 * np.exp(-phantom3.r2star * te)
        np.testing.assert_allclose(acq.magnitude[..., n], mag, atol=1e-5)
    # the total field is the dipole field of chi relative to air (2x padding)
    (ppm,) = dipole_fields([phantom3.chi - CHI_AIR_PPM], phantom3.voxel_size)
    np.testing.assert_allclose(acq.total_field_hz, ppm_to_hz(ppm, 3.0), atol=1e-3)


def test_noise_level_and_background_vs_local(phantom3):
    acq = simulate_acquisition(phantom3, snr=50.0, phase_offset=False, rng=1)
    b = phantom3.brain_mask
    assert acq.noise_sigma == pytest.approx(phantom3.m0[b].mean() / 50.0, rel=1e-6)
    air = phantom3.m0 == 0
    # Rayleigh background: mean = sigma sqrt(pi/2)
    assert acq.magnitude[air, 0].mean() == pytest.approx(acq.noise_sigma * 1.2533, rel=0.05)
    bg = acq.total_field_hz - acq.local_field_hz
    mean_bg, mean_loc = np.abs(bg[b]).mean(), np.abs(acq.local_field_hz[b]).mean()
    assert mean_bg > 10 * mean_loc
    assert 0.2 < mean_loc < 3.0  # Hz at 3 T
    # the local field is the field of the brain tissue sources only (brain voxels without
    # partial-volume skull or air)
    t = phantom3.tissue_mask
    assert t is not None and (t <= b).all() and 0.8 * b.sum() < t.sum() < b.sum()
    (loc,) = dipole_fields([np.where(t, phantom3.chi, 0)], phantom3.voxel_size)
    np.testing.assert_allclose(acq.local_field_hz, ppm_to_hz(loc, 3.0), atol=1e-4)


def test_make_subject_rotation_and_obliquity(phantom3):
    s0 = make_subject(phantom3, seed=5)
    s1 = make_subject(phantom3, seed=5, oblique_deg=20.0)
    np.testing.assert_allclose(b0_direction(s0.affine), (0, 0, 1), atol=1e-9)
    b1 = b0_direction(s1.affine)
    assert np.degrees(np.arccos(abs(b1[2]))) == pytest.approx(20.0, abs=0.01)
    # same anatomy (same seed) on a different grid: similar brain volume and chi statistics
    v0, v1 = s0.brain_mask.sum(), s1.brain_mask.sum()
    assert abs(v0 - v1) < 0.03 * v0
    assert abs(v0 - phantom3.brain_mask.sum()) < 0.1 * v0
    for name in ("putamen", "thalamus", "pallidum"):
        lab = NAME_TO_LABEL[name]
        ref = np.median(phantom3.chi[phantom3.labels == lab])
        assert np.median(s1.chi[s1.labels == lab]) == pytest.approx(ref, rel=0.35), name
    # the subject moved: its brain is not where the phantom's is
    c_ph = (phantom3.affine[:3, :3] @ np.argwhere(phantom3.brain_mask).mean(0)) + phantom3.affine[
        :3, 3
    ]
    assert s0.affine[:3, 3].tolist() != phantom3.affine[:3, 3].tolist()
    assert np.isfinite(c_ph).all()
    s2 = make_subject(phantom3, seed=6)
    assert s2.shape != s0.shape or not np.array_equal(s2.labels, s0.labels)


def test_dataset_layout_and_truth(datasets):
    root, _ = datasets
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert (root / "participants.tsv").read_text().splitlines()[1:] == [
        "sub-01\t3",
        "sub-02\t3",
    ]
    assert (root / "README").exists()
    truth = root / "derivatives" / "qsm_bids-truth"
    tdesc = json.loads((truth / "dataset_description.json").read_text())
    assert tdesc["DatasetType"] == "derivative" and tdesc["GeneratedBy"][0]["Name"] in truth.name
    assert "17\tpallidum" not in (truth / "dseg.tsv").read_text()
    assert "8\tpallidum" in (truth / "dseg.tsv").read_text()
    for sub in ("01", "02"):
        ref = nib.load(root / f"sub-{sub}/anat/sub-{sub}_echo-1_part-mag_MEGRE.nii.gz")
        for n in range(1, 5):
            for part in ("mag", "phase"):
                img = nib.load(root / f"sub-{sub}/anat/sub-{sub}_echo-{n}_part-{part}_MEGRE.nii.gz")
                assert img.shape == ref.shape
                np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        for suffix in (
            "Chimap",
            "desc-brain_mask",
            "dseg",
            "desc-local_fieldmap",
            "desc-total_fieldmap",
            "R2starmap",
        ):
            img = nib.load(truth / f"sub-{sub}/anat/sub-{sub}_{suffix}.nii.gz")
            assert img.shape == ref.shape, suffix
            np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        # integer phase as dcm2niix writes it
        pha = nib.load(root / f"sub-{sub}/anat/sub-{sub}_echo-3_part-phase_MEGRE.nii.gz")
        data = np.asarray(pha.dataobj)
        assert data.dtype == np.int16 and data.min() >= -4096 and data.max() <= 4095
        assert data.min() < -4000 and data.max() > 4000
        side = json.loads(
            (root / f"sub-{sub}/anat/sub-{sub}_echo-3_part-phase_MEGRE.json").read_text()
        )
        assert side["Units"] == "arbitrary" and side["EchoTime"] == 0.020
        assert side["ImagingFrequency"] == pytest.approx(127.732, abs=1e-3)


def test_oblique_field_uses_affine_b0(datasets):
    root, _ = datasets
    truth = root / "derivatives" / "qsm_bids-truth" / "sub-01" / "anat"
    chi_img = nib.load(truth / "sub-01_Chimap.nii.gz")
    b0 = b0_direction(chi_img.affine)
    assert np.degrees(np.arccos(abs(b0[2]))) > 10
    chi = chi_img.get_fdata(dtype=np.float32)
    total = nib.load(truth / "sub-01_desc-total_fieldmap.nii.gz").get_fdata(dtype=np.float32)
    vox = tuple(float(v) for v in chi_img.header.get_zooms()[:3])
    (ppm,) = dipole_fields([chi - CHI_AIR_PPM], vox, tuple(b0))
    (ppm_axial,) = dipole_fields([chi - CHI_AIR_PPM], vox, (0.0, 0.0, 1.0))
    head = chi < 5.0
    err = np.abs(ppm_to_hz(ppm, 3.0) - total)[head].max()
    err_axial = np.abs(ppm_to_hz(ppm_axial, 3.0) - total)[head].mean()
    assert err < 1e-2
    assert err_axial > 1.0  # Hz: ignoring the obliquity gives a clearly different field
    # the local field truth vanishes nowhere special but is small compared with the total
    local = nib.load(truth / "sub-01_desc-local_fieldmap.nii.gz").get_fdata(dtype=np.float32)
    mask = nib.load(truth / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert np.abs(total - local)[mask].mean() > 10 * np.abs(local[mask]).mean()


def test_reproducible_and_subjects_differ(datasets):
    a, b = datasets
    for rel in (
        "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii.gz",
        "sub-02/anat/sub-02_echo-4_part-mag_MEGRE.nii.gz",
        "derivatives/qsm_bids-truth/sub-02/anat/sub-02_Chimap.nii.gz",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c1 = nib.load(a / "derivatives/qsm_bids-truth/sub-01/anat/sub-01_Chimap.nii.gz")
    c2 = nib.load(a / "derivatives/qsm_bids-truth/sub-02/anat/sub-02_Chimap.nii.gz")
    assert c1.shape != c2.shape or not np.allclose(c1.get_fdata(), c2.get_fdata())


def test_pybids_finds_echoes(datasets):
    bids = pytest.importorskip("bids")
    root, _ = datasets
    layout = bids.BIDSLayout(str(root), validate=False)
    assert layout.get_subjects() == ["01", "02"]
    files = layout.get(subject="01", suffix="MEGRE", part="phase", extension=".nii.gz")
    assert len(files) == 4
    tes = sorted(f.get_metadata()["EchoTime"] for f in files)
    assert tes == [0.004, 0.012, 0.020, 0.028]
    mags = layout.get(subject="02", suffix="MEGRE", part="mag", echo=2, extension=".nii.gz")
    assert len(mags) == 1 and mags[0].get_metadata()["EchoTime"] == 0.012


def test_radians_dataset_units(tmp_path):
    root = simulate_dataset(
        tmp_path / "r", resolution_mm=4.0, snr=float("inf"), seed=1, phantom="ideal"
    )
    img = nib.load(root / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.min() >= -np.pi and data.max() < np.pi
    side = json.loads((root / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json").read_text())
    assert side["Units"] == "rad" and side["MagneticFieldStrength"] == 3.0
    np.testing.assert_allclose(b0_direction(img.affine), (0, 0, 1), atol=1e-9)


# ------------------------------------------------------------------ T1w of the same subject
def test_subject_motion_reproduces_the_subject_anatomy(phantom3):
    from scipy import ndimage

    subj = make_subject(phantom3, seed=4, oblique_deg=10.0)
    ijk = np.indices(subj.shape).reshape(3, -1).astype(np.float32)
    world = subj.affine[:3, :3] @ ijk + subj.affine[:3, 3:4]
    src = subj.motion.to_source(world)
    inv = np.linalg.inv(phantom3.affine)
    vox = inv[:3, :3] @ src + inv[:3, 3:4]
    labels = ndimage.map_coordinates(phantom3.labels, vox, order=0, mode="constant")
    assert (labels.reshape(subj.shape) == subj.labels).mean() > 0.999


def test_t1w_scan_contrast_grid_and_motion(phantom3):
    from qsm_bids.simulate.phantom import make_subject_t1w

    subj = make_subject(phantom3, seed=4)
    scan = make_subject_t1w(subj, seed=9, voxel_size_mm=(2.0, 2.0, 2.0), orientation="LPS")
    assert scan.image.dtype == np.float32 and scan.image.shape == scan.labels.shape
    assert nib.aff2axcodes(scan.affine) == ("L", "P", "S")
    assert np.allclose(scan.voxel_size, (2.0, 2.0, 2.0))
    # a small rigid motion between the scans (at most 4 degrees and 4 mm per axis)
    rot = scan.to_subject[:3, :3]
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
    assert 1.2 <= angle <= 4.0 + 1e-6 and np.isclose(angle, scan.rotation_deg)
    assert np.all(np.abs(scan.translation_mm) <= 4.0)
    # T1 contrast: WM > deep grey > GM > CSF > skull (medians relative to WM ~ 1)
    med = {
        n: float(np.median(scan.image[scan.labels == NAME_TO_LABEL[n]]))
        for n in ("wm", "thalamus", "putamen", "caudate", "gm", "csf", "skull", "scalp")
    }
    assert 0.9 < med["wm"] < 1.1, med
    assert med["wm"] > med["thalamus"] > med["putamen"] > med["caudate"] > med["gm"], med
    assert med["gm"] > med["csf"] > med["skull"] and med["scalp"] > med["gm"], med
    # the true labels of the T1w are the subject's labels carried by the true rigid map
    ijk = np.argwhere(subj.brain_mask)
    x = ijk @ subj.affine[:3, :3].T + subj.affine[:3, 3]
    inv = np.linalg.inv(scan.to_subject)
    y = x @ inv[:3, :3].T + inv[:3, 3]
    v = np.rint((y - scan.affine[:3, 3]) @ np.linalg.inv(scan.affine[:3, :3]).T).astype(int)
    t1_labels = scan.labels[v[:, 0], v[:, 1], v[:, 2]]
    assert (t1_labels == subj.labels[subj.brain_mask]).mean() > 0.75


def test_dataset_t1w_option(datasets, tmp_path):
    a, _ = datasets
    assert not list(a.rglob("*T1w*"))  # off by default
    kw = dict(subjects=1, resolution_mm=4.0, seed=5, phantom="ideal")
    plain = simulate_dataset(tmp_path / "plain", **kw)
    with_t1 = simulate_dataset(tmp_path / "t1", t1w=True, t1w_voxel_size_mm=(2.0, 2.0, 2.0), **kw)
    anat = Path("sub-01") / "anat"
    t1 = nib.load(with_t1 / anat / "sub-01_T1w.nii.gz")
    assert t1.get_data_dtype() == np.int16 and t1.header.get_zooms()[:3] == (2.0, 2.0, 2.0)
    side = json.loads((with_t1 / anat / "sub-01_T1w.json").read_text())
    assert side["PulseSequenceType"] == "MPRAGE" and side["MagneticFieldStrength"] == 3.0
    truth = with_t1 / "derivatives" / "qsm_bids-truth" / anat
    xfm = json.loads((truth / "sub-01_from-T1w_to-orig_mode-image_xfm.json").read_text())
    assert np.asarray(xfm["Matrix"]).shape == (4, 4)
    dseg = nib.load(truth / "sub-01_space-T1w_dseg.nii.gz")
    assert dseg.shape == t1.shape and np.allclose(dseg.affine, t1.affine)
    # every other file is byte-identical to the dataset without the T1w
    for p in plain.rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (with_t1 / p.relative_to(plain)).read_bytes(), p
