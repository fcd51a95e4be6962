"""Tests of the realistic simulator: fine grid, k-space truncation, sub-voxel structure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.bids.layout import find_runs
from qsm_bids.bids.load import load_run
from qsm_bids.cli.main import main
from qsm_bids.core.kernels import b0_direction
from qsm_bids.core.physics import CHI_AIR_PPM, ppm_to_hz
from qsm_bids.simulate import (
    FineSubject,
    HeadPhantom,
    RealismOptions,
    make_fine_subject,
    make_head_phantom,
    make_subject,
    simulate_acquisition,
    simulate_dataset,
    simulate_realistic_acquisition,
)
from qsm_bids.simulate.forward import dipole_fields
from qsm_bids.simulate.phantom import CAUDATE, CHI_PPM, CSF, PALLIDUM, PUTAMEN, VEIN, WM
from qsm_bids.simulate.realistic import crop_grid
from qsm_bids.simulate.realistic_forward import fine_fields_ppm
from qsm_bids.simulate.resample import (
    block_average,
    block_mode,
    fine_affine,
    kspace_truncate,
)
from qsm_bids.simulate.structure import Vein, microstructure_offset_ppm, tube_occupancy

INF = float("inf")
TRUTH = Path("derivatives") / "qsm_bids-truth" / "sub-01" / "anat"


@pytest.fixture(scope="module")
def grid4() -> HeadPhantom:
    """A 4 mm subject grid (fine grid 2 mm): small and fast."""
    return make_subject(make_head_phantom(4.0), seed=3)


@pytest.fixture(scope="module")
def fine4(grid4) -> FineSubject:
    return make_fine_subject(grid4, seed=3)


@pytest.fixture(scope="module")
def fine4_isotropic(grid4) -> FineSubject:
    """The same subject without the white-matter microstructure offset."""
    return make_fine_subject(grid4, seed=3, options=RealismOptions(anisotropy_ppm=0.0))


def _box_subject(chi: np.ndarray, brain: np.ndarray, factor: int, voxel_out: float):
    """A synthetic fine subject on an axis-aligned box (for analytic checks)."""
    out_shape = tuple(n // factor for n in chi.shape)
    aff = np.diag([voxel_out, voxel_out, voxel_out, 1.0])
    zeros = np.zeros(out_shape, dtype=np.float32)
    grid = HeadPhantom(
        chi=zeros,
        labels=zeros.astype(np.int16),
        brain_mask=zeros > 0,
        head_mask=zeros > 0,
        m0=zeros,
        r2star=zeros,
        affine=aff,
        voxel_size=(voxel_out, voxel_out, voxel_out),
    )
    return FineSubject(
        chi=chi.astype(np.float32),
        m0=np.ones(chi.shape, np.float32),
        r2star=np.zeros(chi.shape, np.float32),
        labels=np.zeros(chi.shape, np.int16),
        brain_mask=brain,
        affine=fine_affine(aff, factor),
        factor=factor,
        output=grid,
        veins=[],
        fibre_index=np.zeros(0, np.int64),
        fibres=np.zeros((0, 3), np.float32),
        options=RealismOptions(anisotropy_ppm=0.0),
    )


# ------------------------------------------------------------------ forward field, analytic
@pytest.mark.parametrize("case", ["sphere_in_tissue", "water_sphere_in_air"])
@pytest.mark.parametrize("tilt_deg", [0.0, 25.0])
def test_fine_grid_field_of_a_sphere_matches_the_analytic_field(case, tilt_deg):
    # sphere of radius a = 3 mm on a 0.5 mm fine grid (64^3), 1.5x padding: outside
    # (dchi/3)(a/r)^3(3cos^2 theta - 1), inside 0 (Lorentz corrected, D(0) = 0)
    n, h, a = 64, 0.5, 3.0
    x = (np.arange(n) - n // 2) * h
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    r = np.sqrt(X**2 + Y**2 + Z**2)
    inside = r <= a
    t = np.deg2rad(tilt_deg)
    b0 = np.array([np.sin(t), 0.0, np.cos(t)])
    if case == "sphere_in_tissue":  # local field: dchi 0.4 ppm in a chi = 0 background
        dchi = 0.4
        fine = _box_subject(np.where(inside, dchi, 0.0), np.ones(r.shape, bool), 2, 2 * h)
        _, field, _ = fine_fields_ppm(fine, b0, pad_factor=1.5)
    else:  # total field: water (0 ppm) in air (+9.4 ppm), i.e. dchi = -9.4
        dchi = -CHI_AIR_PPM
        fine = _box_subject(np.where(inside, 0.0, CHI_AIR_PPM), inside, 2, 2 * h)
        field, _, _ = fine_fields_ppm(fine, b0, pad_factor=1.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos2 = ((X * b0[0] + Y * b0[1] + Z * b0[2]) / r) ** 2
        expected = dchi / 3.0 * (a / r) ** 3 * (3.0 * cos2 - 1.0)
    shell = (r >= 1.6 * a) & (r <= 3.0 * a)
    peak = 2.0 / 3.0 * abs(dchi) / 1.6**3  # largest |expected| on the shell
    assert np.median(np.abs(field - expected)[shell]) < 0.01 * peak
    # the staircase sphere's Nyquist content leaves a fine-grid checkerboard for oblique B0
    # (up to ~20 % at single voxels), which any 2x2x2 average (the acquisition) removes
    expected[r == 0] = 0.0
    blocks = block_average(r, 2)
    err = np.abs(block_average(field, 2) - block_average(expected, 2))
    assert err[(blocks >= 1.6 * a) & (blocks <= 3.0 * a)].max() < 0.05 * peak
    inner = np.abs(field[r <= a - 1.0])
    assert np.median(inner) < 0.015 * (2.0 / 3.0) * abs(dchi)
    assert inner.max() < 0.08 * (2.0 / 3.0) * abs(dchi)


# ------------------------------------------------------------------ grids and k-space truncation
def test_fine_grid_blocks_are_centred_on_the_output_voxels():
    aff = np.array([[1.8, 0.3, 0.0, -50.0], [-0.3, 1.8, 0.1, 20.0], [0.0, -0.1, 2.0, 7.0],
                    [0, 0, 0, 1]])  # fmt: skip
    for f in (2, 3):
        fa = fine_affine(aff, f)
        ijk = np.indices((4 * f, 3 * f, 2 * f)).reshape(3, -1).astype(float)
        world = (fa[:3, :3] @ ijk + fa[:3, 3:4]).reshape(3, 4 * f, 3 * f, 2 * f)
        centres = np.stack([block_average(w, f) for w in world])
        out = np.indices((4, 3, 2)).reshape(3, -1).astype(float)
        expected = (aff[:3, :3] @ out + aff[:3, 3:4]).reshape(3, 4, 3, 2)
        np.testing.assert_allclose(centres, expected, atol=1e-4)
    labels = np.zeros((4, 4, 2), np.int16)
    labels[:2, :2, :] = 5
    labels[0, 0, 0] = 3
    np.testing.assert_array_equal(block_mode(labels, 2)[:, :, 0], [[5, 0], [0, 0]])


def test_kspace_truncation_keeps_constants_and_samples_the_block_centres():
    c = np.complex64(2.5 * np.exp(0.7j))
    const = np.full((24, 20, 18), c, dtype=np.complex64)
    np.testing.assert_allclose(kspace_truncate(const, (12, 10, 9)), c, atol=1e-5)
    np.testing.assert_allclose(kspace_truncate(const, (8, 10, 6)), c, atol=1e-5)  # f = 3, 2, 3
    # a smooth (band-limited) real image: the truncation returns its values at the output
    # voxel centres, i.e. at fine position f i + (f - 1)/2 (a quarter output voxel off
    # without the linear phase)
    n, f, s = 32, 2, 3.0  # output voxels, factor, Gaussian SD (output voxels)
    u = (np.arange(f * n) - (f - 1) / 2) / f  # fine voxel -> output coordinate
    g = lambda x: np.exp(-((x - 13.3) ** 2) / (2 * s * s))  # noqa: E731
    fine = g(u)[:, None, None] * g(u)[None, :, None] * g(u)[None, None, :]
    out = kspace_truncate(fine.astype(np.float32), (n, n, n))
    i = np.arange(n)
    expected = g(i)[:, None, None] * g(i)[None, :, None] * g(i)[None, None, :]
    assert np.abs(out.imag).max() < 1e-3
    assert np.abs(out.real - expected).max() < 2e-3
    naive = fine[::f, ::f, ::f]  # sampling the fine grid instead: off by a quarter voxel
    assert np.abs(naive - expected).max() > 10 * np.abs(out.real - expected).max()


def test_kspace_truncation_keeps_magnitude_and_the_mean_phase_of_a_smooth_field():
    n, f = 24, 2
    u = (np.arange(f * n) - (f - 1) / 2) / f
    X, Y, Z = np.meshgrid(u, u, u, indexing="ij")
    phi = 1.5 * np.exp(-((X - 11) ** 2 + (Y - 12) ** 2 + (Z - 10) ** 2) / (2 * 4.0**2))
    sig = (0.8 * np.exp(1j * phi)).astype(np.complex64)
    out = kspace_truncate(sig, (n, n, n))
    np.testing.assert_allclose(np.abs(out), 0.8, atol=2e-3)
    # the phase is the field's value at the voxel centre (the block average differs by the
    # curvature term h^2/24 lap(phi), here < 0.02 rad), and the mean phase is kept
    i = np.arange(n)
    I, J, K = np.meshgrid(i, i, i, indexing="ij")
    centre = 1.5 * np.exp(-((I - 11) ** 2 + (J - 12) ** 2 + (K - 10) ** 2) / (2 * 4.0**2))
    assert np.abs(np.angle(out) - centre).max() < 5e-3
    ref = block_average(phi, f)
    assert np.abs(np.angle(out) - ref).max() < 0.02
    assert abs(float(np.angle(out).mean() - ref.mean())) < 1e-3


# ------------------------------------------------------------------ not the inverse crime
def _field_differences(acq, truth, near: np.ndarray) -> tuple[float, float, float]:
    """Near veins: |data field - coarse-kernel field| and |fine->coarse field truth - coarse
    kernel field| (both demeaned over the tissue), relative to the local field RMS."""
    b0 = b0_direction(truth.affine)
    (coarse,) = dipole_fields([truth.chi - np.float32(CHI_AIR_PPM)], truth.voxel_size, b0)
    coarse = ppm_to_hz(coarse, 3.0)
    te = acq.echo_times_s[0]
    data = acq.phase[..., 0] / (2 * np.pi * te)
    tissue = truth.tissue_mask
    scale = np.sqrt(np.mean(acq.local_field_hz[near] ** 2))
    out = []
    for field in (data, acq.total_field_hz):
        d = field - coarse
        d -= np.median(d[tissue])
        out.append(float(np.sqrt(np.mean(d[near] ** 2)) / scale))
    (loc,) = dipole_fields([np.where(tissue, truth.chi, 0)], truth.voxel_size, b0)
    d = acq.local_field_hz - ppm_to_hz(loc, 3.0)
    out.append(float(np.sqrt(np.mean(d[near] ** 2)) / scale))
    return tuple(out)  # type: ignore[return-value]


def test_realistic_data_differ_from_the_coarse_grid_forward_model(grid4, fine4_isotropic):
    """The realistic data are not what the reconstruction's own kernel predicts from the
    truth on the acquired grid (the ideal simulator's data are exactly that)."""
    kw = dict(echo_times_s=(0.001,), snr=INF, phase_offset=False)  # 1 ms: no phase wraps
    acq = simulate_realistic_acquisition(fine4_isotropic, bias=0.0, pad_factor=2.0, **kw)
    truth = fine4_isotropic.truth()
    veins = block_average(fine4_isotropic.labels == VEIN, 2) > 0
    near = ndimage.binary_dilation(veins) & truth.tissue_mask
    assert near.sum() > 300
    data, field, local = _field_differences(acq, truth, near)
    assert data > 0.3  # the acquired phase (intra-voxel dephasing, partial volume)
    assert field > 0.1  # the field truth (block average of the fine-grid field)
    assert local > 0.1  # its local part
    # control: the ideal simulator is the coarse-grid forward model
    ideal = simulate_acquisition(grid4, **kw)
    vein_ideal = ndimage.binary_dilation(grid4.labels == VEIN) & grid4.tissue_mask
    assert max(_field_differences(ideal, grid4, vein_ideal)) < 1e-3


# ------------------------------------------------------------------ microstructure offset
def test_microstructure_offset_model():
    a = 0.006
    fibres = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 2.0, 0], [1, 0, 1.0]])
    off = microstructure_offset_ppm(fibres, (0, 0, 1), a)
    np.testing.assert_allclose(off, [2 * a / 3, -a / 3, -a / 3, a * (2 / 3 - 0.5)], atol=1e-9)


def test_anisotropy_is_in_the_field_not_in_the_truth_chi(fine4, fine4_isotropic):
    a = fine4.options.anisotropy_ppm
    assert 0.001 <= a <= 0.02  # ppb: 12 by default (Wharton and Bowtell, PNAS 2012)
    b0 = b0_direction(fine4.affine)
    *_, micro = fine_fields_ppm(fine4, b0)
    wm = fine4.labels == WM
    assert (micro[~wm] == 0).all()
    assert micro[wm].min() >= -a / 3 - 1e-7 and micro[wm].max() <= 2 * a / 3 + 1e-7
    assert micro[wm].max() - micro[wm].min() > 0.8 * a and micro[wm].std() > 0.1 * a
    # the fibre field is smooth: neighbouring WM voxels have similar offsets
    ix = np.argwhere(wm[:-1] & wm[1:])
    jump = np.abs(micro[ix[:, 0] + 1, ix[:, 1], ix[:, 2]] - micro[tuple(ix.T)])
    assert np.median(jump) < 0.1 * a
    # the truth chi does not contain it; the field truths and the phase do
    np.testing.assert_array_equal(fine4.truth().chi, fine4_isotropic.truth().chi)
    kw = dict(echo_times_s=(0.004, 0.02), snr=INF, rng=0)
    with_a = simulate_realistic_acquisition(fine4, **kw)
    without = simulate_realistic_acquisition(fine4_isotropic, **kw)
    hz = ppm_to_hz(1.0, 3.0)
    expected = block_average(micro, 2) * hz
    np.testing.assert_allclose(with_a.local_field_hz - without.local_field_hz, expected,
                               atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(with_a.total_field_hz - without.total_field_hz, expected,
                               atol=1e-3)  # fmt: skip
    wm_out = fine4.truth().labels == WM
    dphi = np.angle(np.exp(1j * (with_a.phase[..., 1] - without.phase[..., 1])))[wm_out]
    assert np.abs(dphi).max() > 0.5 * 2 * np.pi * 0.02 * 0.8 * a / 3 * hz


# ------------------------------------------------------------------ veins
def test_tube_occupancy_conserves_the_vein_volume():
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for r in (0.3, 0.6, 2.0):
        pts = np.stack([np.full(81, 15.2), np.full(81, 14.7), np.linspace(5.0, 25.0, 81)], 1)
        idx, occ = tube_occupancy(Vein(pts, r, 0.4, "parallel"), aff, (30, 30, 30))
        assert occ.max() <= 1.0 and occ.min() >= 0.0
        capsule = np.pi * r * r * 20.0 + 4.0 / 3.0 * np.pi * r**3
        assert occ.sum() == pytest.approx(capsule, rel=0.02)
    centre = np.ravel_multi_index((15, 15, 15), (30, 30, 30))
    assert occ[idx == centre][0] == pytest.approx(1.0, abs=0.03)
    far = np.ravel_multi_index((15, 19, 15), (30, 30, 30))  # 4.3 mm from the axis
    assert far not in idx


def test_small_veins_run_in_every_orientation(fine4):
    veins = fine4.veins
    assert len(veins) >= 60
    angle = np.array([np.degrees(np.arccos(abs(v.direction()[2]))) for v in veins])
    assert (angle < 30).sum() >= 10  # along B0 (the world z axis; this grid is not oblique)
    assert (angle > 60).sum() >= 10  # across B0
    assert ((angle > 30) & (angle < 60)).sum() >= 10  # oblique
    radii = np.array([v.radius_mm for v in veins])
    chis = np.array([v.chi_ppm for v in veins])
    assert radii.min() >= 0.3 and radii.max() <= 1.0 and np.ptp(radii) > 0.4
    assert chis.min() >= 0.3 and chis.max() <= 0.45
    assert all(v.length_mm >= 4.0 for v in veins)
    # they are tortuous: the centre line is longer than its end-to-end distance
    bent = [v.length_mm / np.linalg.norm(v.points_mm[-1] - v.points_mm[0]) for v in veins]
    assert np.median(bent) > 1.005
    # and drawn: more paramagnetic than the tissue around them
    inv = np.linalg.inv(fine4.affine)
    thick = [v for v in veins if v.radius_mm > 0.8 and v.length_mm > 10]
    mid = np.array([v.points_mm[len(v.points_mm) // 2] for v in thick])
    ijk = np.rint(mid @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    assert np.median(fine4.chi[tuple(ijk.T)]) > 0.05


# ------------------------------------------------------------------ iron, texture, reference
def test_deep_grey_iron_gradients_and_truth_reference(fine4):
    fine = fine4
    for lab in (PALLIDUM, PUTAMEN, CAUDATE):
        chi = fine.chi[fine.labels == lab]
        assert chi.std() > 0.1 * chi.mean(), lab  # not constant
        assert chi.mean() == pytest.approx(CHI_PPM[lab], rel=0.2), lab
    # the putamen's iron rises posteriorly (world -y; the subject is rotated < 8 degrees)
    sel = np.argwhere(fine.labels == PUTAMEN)
    y = (sel @ fine.affine[:3, :3].T + fine.affine[:3, 3])[:, 1]
    assert np.corrcoef(-y, fine.chi[tuple(sel.T)])[0, 1] > 0.3
    # white matter varies smoothly by a few ppb around -0.03 ppm; CSF is the zero reference
    truth = fine.truth()
    wm = fine.chi[fine.labels == WM]
    spread = (np.percentile(wm, 84) - np.percentile(wm, 16)) / 2  # robust SD (veins cross WM)
    assert np.median(wm) == pytest.approx(CHI_PPM[WM], abs=0.002) and 0.001 < spread < 0.006
    assert abs(float(np.median(truth.chi[truth.labels == CSF]))) < 0.005
    np.testing.assert_array_equal(truth.chi, block_average(fine.chi, 2))
    assert truth.brain_mask.sum() == pytest.approx(fine.brain_mask.sum() / 8, rel=0.05)


def test_noise_level_bias_and_decay(fine4):
    kw = dict(rng=7, echo_times_s=(0.004, 0.012, 0.020, 0.028))
    clean = simulate_realistic_acquisition(fine4, snr=INF, **kw)
    noisy = simulate_realistic_acquisition(fine4, snr=50.0, **kw)
    wm = block_average(fine4.labels == WM, 2) >= 0.5
    assert noisy.noise_sigma == pytest.approx(clean.magnitude[wm, 0].mean() / 50.0, rel=1e-5)
    head = ndimage.binary_dilation(fine4.truth().head_mask, iterations=3)
    s_clean = clean.magnitude * np.exp(1j * clean.phase)
    s_noisy = noisy.magnitude * np.exp(1j * noisy.phase)
    resid = (s_noisy - s_clean)[~head, 0]
    assert resid.real.std() == pytest.approx(noisy.noise_sigma, rel=0.05)
    # T2* decay in white matter: R2* ~ 20 1/s at 3 T, plus some intra-voxel dephasing
    ratio = np.median(clean.magnitude[wm, 3] / clean.magnitude[wm, 0])
    assert np.exp(-40.0 * 0.024) < ratio < np.exp(-15.0 * 0.024)
    # the receive bias makes white matter's magnitude vary smoothly by tens of per cent
    m = clean.magnitude[wm, 0]
    assert 0.05 < m.std() / m.mean() < 0.4


# ------------------------------------------------------------------ the dataset and the CLI
def test_simulate_command_writes_valid_pipeline_input(tmp_path):
    out = tmp_path / "sim"
    args = ["simulate", str(out), "--resolution", "4", "--seed", "2", "--field-strength", "7",
            "--oblique", "15", "--phase-format", "integer",
            "--echo-times", "0.004", "0.010", "0.016"]  # fmt: skip
    assert main(args) == 0  # --phantom realistic is the default
    assert "Phantom: realistic" in (out / "README").read_text()
    (run,) = find_runs(out)
    data = load_run(run)
    assert data.phase.shape[-1] == 3 and data.magnitude.shape == data.phase.shape
    assert data.echo_times == (0.004, 0.010, 0.016)
    assert data.field_strength == pytest.approx(7.0, abs=1e-6)
    assert data.phase.min() >= -np.pi and data.phase.max() < np.pi
    assert np.degrees(np.arccos(abs(data.b0_dir[2]))) == pytest.approx(15.0, abs=0.01)
    truth = {}
    for suffix in ("Chimap", "R2starmap", "desc-brain_mask", "dseg", "desc-local_fieldmap",
                   "desc-total_fieldmap", "desc-phase0_phasemap"):  # fmt: skip
        img = nib.load(out / TRUTH / f"sub-01_{suffix}.nii.gz")
        assert img.shape == data.phase.shape[:3], suffix
        np.testing.assert_allclose(img.affine, data.affine, atol=1e-5)
        truth[suffix] = np.asarray(img.dataobj)
    side = json.loads((out / TRUTH / "sub-01_desc-local_fieldmap.json").read_text())
    assert abs(side["B0Direction"][2]) == pytest.approx(np.cos(np.deg2rad(15.0)), abs=1e-3)
    wm = truth["dseg"] == WM
    assert np.median(truth["R2starmap"][wm]) == pytest.approx(2 * 20.0, rel=0.15)  # 7 T
    assert np.median(truth["Chimap"][wm]) == pytest.approx(CHI_PPM[WM], abs=0.004)
    # the ideal phantom of the same seed: same grid, different data
    ideal = tmp_path / "ideal"
    assert main([*args[:1], str(ideal), *args[2:], "--phantom", "ideal"]) == 0
    assert "Phantom: realistic" not in (ideal / "README").read_text()
    chi_ideal = nib.load(ideal / TRUTH / "sub-01_Chimap.nii.gz")
    np.testing.assert_allclose(chi_ideal.affine, data.affine, atol=1e-6)
    assert chi_ideal.shape == truth["Chimap"].shape
    assert not np.allclose(np.asarray(chi_ideal.dataobj), truth["Chimap"])


def test_realistic_dataset_is_deterministic(tmp_path, grid4, fine4):
    kw = dict(resolution_mm=4.0, seed=5, echo_times_s=(0.005, 0.015), snr=60.0)
    a = simulate_dataset(tmp_path / "a", **kw)
    b = simulate_dataset(tmp_path / "b", **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 15
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = make_fine_subject(grid4, seed=4)
    assert not np.array_equal(other.chi, fine4.chi)
    again = make_fine_subject(grid4, seed=3, options=dataclasses.replace(fine4.options))
    np.testing.assert_array_equal(again.chi, fine4.chi)
    np.testing.assert_array_equal(again.fibres, fine4.fibres)


def test_a_region_of_the_grid_builds_the_same_anatomy(grid4):
    opts = RealismOptions(folding=0.0, small_veins=0)  # only the (deterministic) anatomy
    full = make_fine_subject(grid4, seed=1, options=opts)
    region = (slice(10, 30), slice(20, 40), slice(15, 35))
    block = make_fine_subject(crop_grid(grid4, region), seed=1, options=opts)
    assert block.shape == (40, 40, 40)
    fine_region = tuple(slice(2 * s.start, 2 * s.stop) for s in region)
    # equal but at a few edge voxels (the smooth deformation is extrapolated there)
    assert (block.labels == full.labels[fine_region]).mean() > 0.999
    assert (block.brain_mask == full.brain_mask[fine_region]).mean() > 0.999
    np.testing.assert_allclose(block.affine[:3, 3], full.affine[:3, :3] @ [20, 40, 30]
                               + full.affine[:3, 3], atol=1e-6)  # fmt: skip
