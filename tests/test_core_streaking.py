"""The no-reference streaking index (qsm_bids.core.streaking): isotropic maps score ~1,
streaks along the dipole cone more, a suppressed cone less; and where it is reported
(the Chimap sidecar, ``qsm-bids evaluate``)."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.inversion.tikhonov import tikhonov
from qsm_bids.core.inversion.tkd import tkd
from qsm_bids.core.kernels import dipole_convolve, dipole_kernel, fftn, ifftn
from qsm_bids.core.streaking import STREAKING_FLAG, streaking_index

N = 48
ISO = (1.0, 1.0, 1.0)
AXIAL = (0.0, 0.0, 1.0)


def _grid(voxel_size=ISO) -> np.ndarray:
    return (np.indices((N, N, N), dtype=np.float32) - (N - 1) / 2) * np.reshape(
        np.asarray(voxel_size, np.float32), (3, 1, 1, 1)
    )


def _ball(radius_mm: float, voxel_size=ISO) -> np.ndarray:
    """A ball (an ellipsoid in voxels) of ``radius_mm``: a mask without straight edges."""
    return (_grid(voxel_size) ** 2).sum(axis=0) <= radius_mm**2


def _smooth(seed: int, voxel_size=ISO, sigma_mm: float = 1.0) -> np.ndarray:
    """White noise smoothed by an isotropic (in mm) Gaussian: isotropic power."""
    rng = np.random.default_rng(seed)
    sigma = [sigma_mm / v for v in voxel_size]
    return ndimage.gaussian_filter(rng.standard_normal((N, N, N)), sigma, mode="wrap").astype(
        np.float32
    )


def _cone_noise(seed: int, voxel_size=ISO, b0=AXIAL, halfwidth: float = 0.05) -> np.ndarray:
    """Unit-variance noise whose k-space lies on the dipole cone ``|D| < halfwidth``:
    streaks along the cone directions."""
    rng = np.random.default_rng(seed + 1000)
    d = dipole_kernel((N, N, N), voxel_size, b0)
    x = np.real(ifftn(fftn(rng.standard_normal((N, N, N))) * (np.abs(d) < halfwidth)))
    return (x / x.std()).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_isotropic_volume_scores_about_one(seed):
    assert streaking_index(_smooth(seed), _ball(20.0), ISO, AXIAL) == pytest.approx(1.0, abs=0.15)


def test_streaks_along_the_cone_score_higher_and_grow_with_their_amplitude():
    x, mask = _smooth(0), _ball(20.0)
    base = streaking_index(x, mask, ISO, AXIAL)
    streak = _cone_noise(0) * x.std()
    weak = streaking_index(x + 0.5 * streak, mask, ISO, AXIAL)
    strong = streaking_index(x + 1.5 * streak, mask, ISO, AXIAL)
    assert base < 1.15 and weak > 1.4 and weak > base + 0.4
    assert strong > 3.0 and strong > weak + 1.5
    assert streaking_index(streak, mask, ISO, AXIAL) > 10.0  # streaks alone


def test_a_suppressed_cone_scores_lower():
    """TSVD-like: the cone |D| < 0.1 removed from k-space (the mask brings a little back)."""
    x, mask = _smooth(1), _ball(20.0)
    d = dipole_kernel((N, N, N), ISO, AXIAL)
    tsvd = np.real(ifftn(fftn(x) * (np.abs(d) >= 0.1))).astype(np.float32)
    assert streaking_index(tsvd, mask, ISO, AXIAL) < 0.5
    assert streaking_index(x, mask, ISO, AXIAL) > 0.85


def test_invariant_to_offset_and_scale():
    y = _smooth(2) + 0.4 * _cone_noise(2) * _smooth(2).std()
    mask = _ball(20.0)
    ref = streaking_index(y, mask, ISO, AXIAL)
    assert ref > 1.3
    for a, c in ((1.0, 5.0), (1e-3, 0.0), (250.0, -3.0), (-2.0, 0.7)):
        assert streaking_index(a * y + c, mask, ISO, AXIAL) == pytest.approx(ref, rel=1e-3)
    # values outside the mask are ignored
    outside = np.where(mask, y, np.float32(7.0))
    assert streaking_index(outside, mask, ISO, AXIAL) == pytest.approx(ref, rel=1e-5)


def test_a_wrong_b0_direction_does_not_see_the_streaks():
    x, mask = _smooth(3), _ball(20.0)
    y = x + 1.0 * _cone_noise(3) * x.std()
    right = streaking_index(y, mask, ISO, AXIAL)
    for wrong in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
        assert streaking_index(y, mask, ISO, wrong) == pytest.approx(1.0, abs=0.2)
        assert right > 2.0 * streaking_index(y, mask, ISO, wrong)
    # the sign of b0 does not matter (the kernel is even in b)
    assert streaking_index(y, mask, ISO, (0.0, 0.0, -1.0)) == pytest.approx(right, rel=1e-6)


def test_anisotropic_voxels_and_an_oblique_b0():
    """The cone of an oblique B0 on anisotropic voxels (kernel in voxel space, k in mm)."""
    vox = (0.8, 1.0, 1.6)
    b0 = np.array([0.2, 0.3, 0.93]) / np.linalg.norm([0.2, 0.3, 0.93])
    x, mask = _smooth(4, vox, 1.2), _ball(19.0, vox)
    assert streaking_index(x, mask, vox, b0) == pytest.approx(1.0, abs=0.15)
    y = x + 2.0 * _cone_noise(4, vox, b0) * x.std()
    oblique = streaking_index(y, mask, vox, b0)
    assert oblique > 2.0 and oblique > streaking_index(y, mask, vox, AXIAL) + 0.8


def test_degenerate_input():
    mask = _ball(10.0)
    assert np.isnan(streaking_index(np.full((N, N, N), 3.0), mask, ISO, AXIAL))
    with pytest.raises(ValueError, match="equal 3D shapes"):
        streaking_index(np.zeros((N, N, N)), mask[:-1], ISO, AXIAL)
    with pytest.raises(ValueError, match="at least 2 voxels"):
        streaking_index(np.zeros((N, N, N)), np.zeros_like(mask), ISO, AXIAL)
    with pytest.raises(ValueError, match="cone_halfwidth"):
        streaking_index(_smooth(0), mask, ISO, AXIAL, cone_halfwidth=0.5)
    with pytest.raises(ValueError, match="k_band"):
        streaking_index(_smooth(0), mask, ISO, AXIAL, k_band=(0.5, 0.2))


# --------------------------------------------------------------------------------------
# real reconstructions of the simulator's phantom
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_field():
    from qsm_bids.simulate.phantom import make_head_phantom

    ph = make_head_phantom(4.0)
    mask = ndimage.binary_erosion(ph.brain_mask, iterations=1) & ph.tissue_mask
    field = dipole_convolve(np.where(mask, ph.chi, 0), ph.voxel_size, AXIAL, pad_factor=1.5)
    rng = np.random.default_rng(0)
    field = field + rng.normal(0.0, 0.003, field.shape).astype(np.float32)
    return ph, mask, field


def test_tkd_with_a_tiny_threshold_streaks_a_regularised_map_does_not(phantom_field):
    """TKD of a noisy field: the smaller the threshold, the more of the cone's noise and
    model error is let through; Tikhonov and the truth stay below the report's flag."""
    ph, mask, field = phantom_field
    vox = ph.voxel_size
    scores = {
        t: streaking_index(tkd(field, mask, vox, AXIAL, threshold=t), mask, vox, AXIAL)
        for t in (0.02, 0.05, 0.1, 0.19)
    }
    assert scores[0.02] > scores[0.05] > scores[0.1] > scores[0.19]
    assert scores[0.02] > 2.0 and scores[0.05] > STREAKING_FLAG
    assert scores[0.19] < 0.8  # the default threshold truncates the cone: below 1
    assert streaking_index(tikhonov(field, mask, vox, AXIAL), mask, vox, AXIAL) < 0.8
    truth = streaking_index(ph.chi, mask, vox, AXIAL)
    assert 0.7 < truth < 1.2 and truth < STREAKING_FLAG


# --------------------------------------------------------------------------------------
# where it is reported
# --------------------------------------------------------------------------------------


def test_chimap_sidecar_has_the_streaking_index_and_field_source(tmp_path):
    """WriteDerivatives on a loaded run: the Chimap sidecar's StreakingIndex is the index
    of the written map in the map's mask, with the run's voxel size and B0 direction; the
    field strength and its source come from the loader; a phase-sign warning is kept."""
    from qsm_bids.bids.layout import find_runs
    from qsm_bids.interfaces.derivatives import WriteDerivatives
    from qsm_bids.interfaces.load import LoadRun, run_to_json
    from qsm_bids.recipe import load_recipe
    from tests.test_bids_layout import SHAPE, write_run

    ds = tmp_path / "ds"
    write_run(ds, sidecar_meta={"MagneticFieldStrength": 3, "ImagingFrequency": 123.2})
    (run,) = find_runs(ds)
    load = LoadRun(run_json=run_to_json(run), in_files=[str(p) for p in run.files])
    (tmp_path / "load").mkdir()
    (tmp_path / "write").mkdir()
    meta_file = load.run(cwd=str(tmp_path / "load")).outputs.meta
    meta = json.loads(open(meta_file).read())
    aff = nb.load(run.phase_files[0]).affine
    g = np.indices(SHAPE, dtype=np.float32) - ((np.array(SHAPE) - 1) / 2).reshape(3, 1, 1, 1)
    local = ((g / np.reshape(np.array(SHAPE) / 2.5, (3, 1, 1, 1))) ** 2).sum(0) <= 1.0
    rng = np.random.default_rng(0)
    chi = np.where(local, ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0), 0)
    files = {}
    for name, data in (("chi", chi), ("mask", local), ("local_mask", local),
                       ("total_field", chi), ("local_field", chi)):  # fmt: skip
        files[name] = str(tmp_path / f"{name}.nii")
        nb.Nifti1Image(np.asarray(data, np.float32), aff).to_filename(files[name])
    node = WriteDerivatives(
        run_json=run_to_json(run),
        output_dir=str(tmp_path / "out"),
        bids_dir=str(ds),
        provenance=json.dumps(load_recipe("default").provenance()),
        meta=meta_file,
        sign_check=json.dumps({"Decision": "abstained", "Warning": "the check abstained"}),
        **files,
    )
    node.run(cwd=str(tmp_path / "write"))
    anat = tmp_path / "out" / "sub-01" / "anat"
    side = json.loads((anat / "sub-01_Chimap.json").read_text())
    written = nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    expected = streaking_index(written, local, meta["voxel_size"], meta["b0_dir"])
    assert side["StreakingIndex"] == pytest.approx(expected, abs=1e-4)
    assert side["StreakingIndex"] != pytest.approx(
        streaking_index(written, local, meta["voxel_size"], (1.0, 0.0, 0.0)), abs=1e-3
    )
    assert side["FieldStrengthSource"] == "ImagingFrequency"
    assert side["MagneticFieldStrength"] == pytest.approx(2.8935, abs=1e-4)
    # an abstained phase-sign check is a warning of every sidecar (the report shows it)
    assert side["PhaseSignWarning"] == "the check abstained"
    assert side["PhaseSignCheck"]["Decision"] == "abstained"
    # only the susceptibility map carries the index
    other = json.loads((anat / "sub-01_desc-local_fieldmap.json").read_text())
    assert "StreakingIndex" not in other and other["FieldStrengthSource"] == "ImagingFrequency"


def test_evaluate_reports_the_index_of_the_map_and_of_the_truth(tmp_path):
    import argparse

    from qsm_bids.cli.evaluate import add_evaluate_arguments, run_evaluate
    from qsm_bids.core.metrics import evaluation_mask

    mask = _ball(20.0)
    truth = np.where(mask, _smooth(5), 0).astype(np.float32)
    streaky = np.where(mask, truth + 1.0 * _cone_noise(5) * truth.std(), 0).astype(np.float32)
    paths = {}
    for name, data in (("truth", truth), ("est", streaky), ("mask", mask.astype(np.uint8))):
        paths[name] = tmp_path / f"sub-01_{name}.nii.gz"
        nb.Nifti1Image(data, np.eye(4)).to_filename(paths[name])
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    out = tmp_path / "eval.json"
    argv = [str(paths["est"]), str(paths["truth"]), "--mask", str(paths["mask"])]
    assert run_evaluate(parser.parse_args([*argv, "--output", str(out)])) == 0
    data = json.loads(out.read_text())
    m = evaluation_mask(mask, 3)
    assert data["streaking_index"] == pytest.approx(
        streaking_index(streaky, m, ISO, AXIAL), rel=1e-6
    )
    assert data["truth_streaking_index"] == pytest.approx(
        streaking_index(truth, m, ISO, AXIAL), rel=1e-6
    )
    assert data["streaking_index"] > STREAKING_FLAG > 1.15 > data["truth_streaking_index"]
    # the B0 direction of the map's sidecar is used when it has one
    (tmp_path / "sub-01_est.json").write_text(json.dumps({"B0Direction": [1.0, 0.0, 0.0]}))
    assert run_evaluate(parser.parse_args([*argv, "--output", str(out)])) == 0
    tilted = json.loads(out.read_text())
    assert tilted["streaking_index"] == pytest.approx(
        streaking_index(streaky, m, ISO, (1.0, 0.0, 0.0)), rel=1e-6
    )
    assert tilted["streaking_index"] < STREAKING_FLAG
