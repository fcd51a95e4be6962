"""QSM challenge metrics against hand-computable cases and the independent QSM-CI scorer,
and the ``qsm-bids evaluate`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.cli.evaluate import add_evaluate_arguments, run_evaluate
from qsm_bids.core.kernels import dipole_kernel, irfftn, rfftn
from qsm_bids.core.metrics import (
    calcification_streaking,
    correlation,
    dgm_slope,
    dgm_slope_error,
    hfen,
    laplacian_of_gaussian,
    nrmse,
    nrmse_detrended,
    region_error_table,
    xsim,
)
from qsm_bids.errors import QSMInputError
from qsm_bids.evaluate import (
    EvaluationInputError,
    evaluate_against_truth,
    evaluate_arrays,
    evaluate_maps,
)

N = 48
#: Phantom labels follow the QSM-CI head phantom (1-6 deep grey, 8 WM, 16 calcification).
NAMES = {
    1: "caudate",
    2: "pallidum",
    3: "putamen",
    4: "red_nucleus",
    5: "dentate",
    6: "substantia_nigra",
    8: "wm",
    16: "calcification",
}
CHI = {1: 0.044, 2: 0.131, 3: 0.038, 4: 0.100, 5: 0.152, 6: 0.111, 8: -0.030, 16: -1.0}
DGM = (1, 2, 3, 4, 5, 6)


def _sphere(center, radius, shape=(N, N, N)) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
    return r2 <= radius * radius


@pytest.fixture(scope="module")
def smooth():
    """Random smooth truth, a scaled, noisy, offset estimate and a mask 9 voxels from the edge."""
    rng = np.random.default_rng(7)
    truth = ndimage.gaussian_filter(rng.standard_normal((N, N, N)), 2.0) * 0.3
    noise = ndimage.gaussian_filter(rng.standard_normal((N, N, N)), 1.5) * 0.05
    est = 0.8 * truth + noise + 0.01
    mask = _sphere((N / 2 - 0.5,) * 3, 15.0)
    return est, truth, mask


@pytest.fixture(scope="module")
def phantom():
    """Blocks of tissue values with a calcification; the estimate is the truth low-passed by
    a Tikhonov dipole filter (streaks around the calcification) plus noise."""
    labels = np.zeros((N, N, N), np.int32)
    brain = _sphere((23.5, 23.5, 23.5), 16.0)
    labels[brain] = 8
    centers = [(17, 18, 24), (30, 18, 24), (17, 30, 24), (30, 30, 24), (24, 24, 16), (24, 24, 32)]
    for lab, c in zip(DGM, centers, strict=True):
        labels[_sphere(c, 3.5) & brain] = lab
    labels[22:25, 10:13, 22:25] = 16
    truth = np.zeros((N, N, N), np.float32)
    for lab, v in CHI.items():
        truth[labels == lab] = v
    d = dipole_kernel((N, N, N), (1.0, 1.0, 1.0), real=True)
    filt = d * d / (d * d + 0.02)
    est = irfftn(rfftn(truth) * filt, (N, N, N)).astype(np.float32)
    est += np.random.default_rng(3).normal(0.0, 0.003, est.shape).astype(np.float32)
    est = np.where(brain, est, 0.0).astype(np.float32)
    return est, truth, brain, labels


# --------------------------------------------------------------------------------------
# Hand-computable cases
# --------------------------------------------------------------------------------------


def test_identical_maps_score_perfectly(smooth):
    _, truth, mask = smooth
    assert nrmse(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert nrmse_detrended(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert hfen(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert xsim(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    assert correlation(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)


def test_linear_maps_detrend_to_zero_and_correlate_fully(smooth):
    _, truth, mask = smooth
    x = 2.0 * truth + 1.0
    assert nrmse_detrended(x, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert nrmse_detrended(-0.5 * truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    # the plain NRMSE sees the doubled contrast: error = truth -> 100 %
    assert nrmse(x, truth, mask) == pytest.approx(100.0, rel=1e-9)
    assert correlation(x, truth, mask) == pytest.approx(1.0, abs=1e-12)
    assert correlation(-x, truth, mask) == pytest.approx(-1.0, abs=1e-12)
    # HFEN is offset invariant (demeaned) and linear in the error: half contrast -> 50 %
    assert hfen(truth + 0.3, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert hfen(0.5 * truth, truth, mask) == pytest.approx(50.0, rel=1e-9)
    # XSIM drops below 1 for a scaled map
    assert xsim(0.5 * truth, truth, mask) < 0.99


def test_log_kernel_is_the_challenge_15_cube():
    """The separable filter equals a direct convolution with the challenge's zero-sum
    15^3 LoG kernel (sigma 1.5 voxels, zero padding)."""
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((20, 22, 18))
    r = np.arange(-7, 8, dtype=np.float64)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    r2, s2 = x * x + y * y + z * z, 1.5**2
    h = np.exp(-r2 / (2 * s2))
    h /= h.sum()
    kernel = h * (r2 / s2**2 - 3.0 / s2)
    kernel -= kernel.mean()
    ref = ndimage.convolve(vol, kernel, mode="constant", cval=0.0)
    np.testing.assert_allclose(laplacian_of_gaussian(vol), ref, atol=1e-12)


def test_dgm_slope_and_region_table(phantom):
    _, truth, brain, labels = phantom
    half = 0.5 * truth
    assert dgm_slope(half, truth, labels, DGM) == pytest.approx(0.5, abs=1e-9)
    assert dgm_slope_error(half, truth, labels, DGM) == pytest.approx(0.5, abs=1e-9)
    assert dgm_slope_error(truth + 0.2, truth, labels, DGM, brain) == pytest.approx(0, abs=1e-7)
    assert np.isnan(dgm_slope_error(truth, truth, labels, (1,)))  # one region: undefined
    table = region_error_table(truth + 0.02 * (labels == 1), truth, labels, NAMES, brain)
    shift = 0.02 * (labels == 1).sum() / brain.sum()  # the extra also moves the brain mean
    assert table["caudate"]["error_ppm"] == pytest.approx(0.02 - shift, abs=1e-6)
    assert table["putamen"]["error_ppm"] == pytest.approx(-shift, abs=1e-6)
    assert table["caudate"]["voxels"] == int((labels == 1).sum())
    raw = region_error_table(truth, truth, labels, NAMES, brain, demean=False)
    assert raw["pallidum"]["truth_ppm"] == pytest.approx(0.131, abs=1e-7)


def test_calcification_exact_and_streaked(phantom):
    est, truth, _, labels = phantom
    calc = labels == 16
    exact = calcification_streaking(truth, truth, calc)
    assert exact.moment_error == pytest.approx(0.0, abs=1e-6)
    assert exact.truth_moment == pytest.approx(-27.0, rel=1e-6)
    assert exact.streaking == pytest.approx(0.0, abs=1e-9)
    assert exact.voxels == 27
    # truth + a known perturbation in the rim: SD of the residual / 1 ppm
    bump = truth.astype(np.float64).copy()
    bump[22:25, 2:6, 22:25] += 0.05  # inside the rim (box starts at y = 7)
    s = calcification_streaking(bump, truth, calc, voxel_volume_mm3=2.0)
    assert s.truth_moment == pytest.approx(-54.0, rel=1e-6)
    assert s.streaking > 0.001
    streaked = calcification_streaking(est, truth, calc)
    assert streaked.streaking > 0.005 and streaked.moment_error > 1.0


# --------------------------------------------------------------------------------------
# Agreement with the QSM-CI scorer (an independent implementation)
# --------------------------------------------------------------------------------------


def _qsm_ci():
    return pytest.importorskip("qsm_ci.qsm_eval")


@pytest.mark.parametrize("case", ["smooth", "phantom"])
def test_agrees_with_qsm_ci(case, smooth, phantom):
    q = _qsm_ci()
    if case == "smooth":
        est, truth, mask = smooth
    else:
        est, truth, mask, _ = phantom
    m = mask.astype(np.uint8)
    # QSM-CI's scorer zeroes both maps outside the mask before scoring; so do ours
    xm = np.where(mask, est, 0.0).astype(np.float64)
    tm = np.where(mask, truth, 0.0).astype(np.float64)
    ref_nrmse, ref_dt = q.nrmse_challenge(xm, tm, m)
    assert nrmse(est, truth, mask) == pytest.approx(ref_nrmse, rel=1e-6)
    assert nrmse_detrended(est, truth, mask) == pytest.approx(ref_dt, rel=1e-6)
    assert correlation(est, truth, mask) == pytest.approx(q.correlation(xm, tm, m), rel=1e-9)
    assert xsim(est, truth, mask) == pytest.approx(q.xsim(xm, tm, m), rel=1e-9)
    # QSM-CI's LoG: scipy gaussian_laplace (17-voxel support, no zero-sum correction); the
    # challenge kernel here is 15^3 and zero-sum: measured agreement ~1e-6 relative
    assert hfen(est, truth, mask, demean=False) == pytest.approx(q.hfen(xm, tm, m), rel=1e-4)


def test_region_measures_agree_with_qsm_ci(phantom):
    q = _qsm_ci()
    est, truth, brain, labels = phantom
    xm = np.where(brain, est, 0.0).astype(np.float64)
    tm = truth.astype(np.float64)
    assert dgm_slope_error(xm, tm, labels, DGM) == pytest.approx(
        q.dgm_linearity(xm, tm, labels), rel=1e-9
    )
    ref_moment, ref_streak = q.calcification_metrics(xm, tm, labels)
    ours = calcification_streaking(xm, tm, labels == 16)
    assert ours.moment_error == pytest.approx(ref_moment, rel=1e-9)
    assert ours.streaking == pytest.approx(ref_streak, rel=1e-9)
    # a flat truth in the rim: both fall back to the SD of the estimate there
    flat = np.where(labels == 16, tm, -0.03)
    ref_moment, ref_streak = q.calcification_metrics(xm, flat, labels)
    ours = calcification_streaking(xm, flat, labels == 16)
    assert (ours.moment_error, ours.streaking) == pytest.approx((ref_moment, ref_streak))


# --------------------------------------------------------------------------------------
# evaluate_maps / evaluate_arrays and the CLI
# --------------------------------------------------------------------------------------

KEYS = {
    "voxels",
    "erode_voxels",
    "coverage",
    "nonfinite_voxels",
    "nrmse_percent",
    "nrmse_detrended_percent",
    "hfen_percent",
    "xsim",
    "correlation",
    "dgm_slope",
    "dgm_slope_error",
    "dgm_regions",
    "calcification",
    "regions",
    "streaking_index",
    "truth_streaking_index",
    "referencing",
}


def test_evaluate_maps_is_json_ready(phantom):
    est, truth, brain, labels = phantom
    out = evaluate_maps(est, truth, brain, labels, NAMES, erode_voxels=1)
    assert KEYS <= set(out)
    json.dumps(out, allow_nan=False)
    m = ndimage.binary_erosion(brain, iterations=1)
    assert out["nrmse_percent"] == pytest.approx(nrmse(est, truth, m), rel=1e-9)
    assert out["dgm_regions"] == [
        "caudate",
        "putamen",
        "pallidum",
        "substantia_nigra",
        "red_nucleus",
    ]
    assert out["calcification"]["voxels"] > 0
    assert 0.0 < out["xsim"] < 1.0 and 0.5 < out["correlation"] < 1.0
    ev = evaluate_arrays(est, truth, brain, labels, NAMES, erode_voxels=1)
    assert ev.nrmse_percent == out["nrmse_percent"]
    assert ev.metrics["hfen_percent"] == out["hfen_percent"]
    assert ev.region_errors()["pallidum"] == pytest.approx(out["regions"]["pallidum"]["error_ppm"])
    assert "pallidum" in ev.table()
    # NaN voxels are scored as 0 and counted
    bad = est.copy()
    bad[24, 24, 24] = np.nan
    out = evaluate_maps(bad, truth, brain, erode_voxels=1)
    assert out["nonfinite_voxels"] == 1 and out["regions"] == {} and out["dgm_slope"] is None


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return path


@pytest.fixture()
def truth_dir(tmp_path, phantom):
    est, truth, brain, labels = phantom
    root = tmp_path / "truth"
    anat = root / "sub-01" / "anat"
    _save(anat / "sub-01_Chimap.nii.gz", truth)
    _save(anat / "sub-01_desc-brain_mask.nii.gz", brain.astype(np.uint8))
    _save(anat / "sub-01_dseg.nii.gz", labels.astype(np.int16))
    rows = ["index\tname"] + [f"{k}\t{v}" for k, v in NAMES.items()]
    (root / "dseg.tsv").write_text("\n".join(rows) + "\n")
    chimap = _save(tmp_path / "out" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz", est)
    return root, chimap


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qsm-bids evaluate")
    add_evaluate_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_json_for_a_truth_folder(truth_dir, phantom, capsys):
    root, chimap = truth_dir
    assert run_evaluate(_parse([str(chimap), str(root), "--erode", "1"])) == 0
    out = chimap.parent / "sub-01_Chimap_evaluation.json"
    data = json.loads(out.read_text())
    assert KEYS | {"inputs", "warnings"} <= set(data)
    assert data["inputs"]["subject"] == "01"
    assert data["inputs"]["labels_tsv"].endswith("dseg.tsv")
    est, truth, brain, labels = phantom
    ref = evaluate_maps(est, truth, brain, labels, NAMES, erode_voxels=1)
    for key in ("nrmse_percent", "hfen_percent", "xsim", "dgm_slope_error"):
        assert data[key] == pytest.approx(ref[key], rel=1e-6)
    assert data["calcification"]["streaking"] == pytest.approx(
        ref["calcification"]["streaking"], rel=1e-6
    )
    printed = capsys.readouterr().out
    assert "NRMSE (%)" in printed and "XSIM" in printed and "pallidum" in printed
    # the same through the library entry point
    ev = evaluate_against_truth(chimap, root, "01", erode_voxels=1)
    assert ev.nrmse_percent == pytest.approx(data["nrmse_percent"], rel=1e-9)


def test_cli_truth_file_with_mask_labels_and_output(truth_dir, tmp_path):
    root, chimap = truth_dir
    anat = root / "sub-01" / "anat"
    dest = tmp_path / "eval" / "scores.json"
    argv = [str(chimap), str(anat / "sub-01_Chimap.nii.gz"), "--output", str(dest)]
    argv += ["--mask", str(anat / "sub-01_desc-brain_mask.nii.gz")]
    argv += ["--labels", str(anat / "sub-01_dseg.nii.gz"), "--labels-tsv", str(root / "dseg.tsv")]
    assert run_evaluate(_parse(argv)) == 0
    data = json.loads(dest.read_text())
    assert data["erode_voxels"] == 3 and data["inputs"]["subject"] is None
    assert data["regions"]["pallidum"]["voxels"] > 0
    # without a mask: where the estimate is nonzero; without labels: no region measures
    assert run_evaluate(_parse([str(chimap), str(anat / "sub-01_Chimap.nii.gz")])) == 0


def test_cli_bad_input_exits_2_naming_the_file(truth_dir, tmp_path, capsys):
    root, chimap = truth_dir
    small = _save(tmp_path / "sub-01_small_Chimap.nii.gz", np.zeros((10, 10, 10), np.float32))
    assert run_evaluate(_parse([str(small), str(root)])) == 2
    err = capsys.readouterr().err
    assert str(small) in err and "shape (10, 10, 10)" in err
    assert run_evaluate(_parse([str(tmp_path / "missing.nii.gz"), str(root)])) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    assert run_evaluate(_parse([str(chimap), str(root), "--subject", "02"])) == 2
    assert "sub-02_Chimap.nii.gz" in capsys.readouterr().err
    with pytest.raises(EvaluationInputError, match="shape") as info:
        evaluate_against_truth(small, root, "01")
    assert isinstance(info.value, QSMInputError) and isinstance(info.value, ValueError)
    assert info.value.path == small
