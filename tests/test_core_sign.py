"""The phase-sign check: on the phantom's truth, and on TKD reconstructions of the
simulator's head phantom with diamagnetic lesions, calcifications, a small field of view
and low SNR, where a correct map must never be flipped (the check abstains instead)."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.inversion.tkd import tkd
from qsm_bids.core.kernels import dipole_convolve
from qsm_bids.core.sign import check_phase_sign
from qsm_bids.simulate import phantom as ph

B0 = (0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom():
    return ph.make_head_phantom(4.0)


@pytest.fixture(scope="module")
def recon_mask(phantom):
    """Brain tissue without partial-volume skull: where the local field is simulated."""
    return ndimage.binary_erosion(phantom.brain_mask, iterations=1) & phantom.tissue_mask


def _tkd_map(chi, mask, vox, noise_ppm=0.0, seed=0, b0=B0):
    """TKD of the local field of ``chi`` inside ``mask``, plus white field noise (ppm)."""
    field = dipole_convolve(np.where(mask, chi, 0), vox, b0, pad_factor=1.5)
    rng = np.random.default_rng(seed)
    field = field + rng.normal(0.0, noise_ppm, field.shape).astype(np.float32)
    return tkd(field, mask, vox, b0)


def _with_spheres(phantom, mask, n, radius_mm, value, seed):
    """The phantom's chi with ``n`` spheres of ``value`` ppm placed in white matter."""
    vox = phantom.voxel_size[0]
    deep_wm = (phantom.labels == ph.WM) & ndimage.binary_erosion(
        mask, iterations=int(np.ceil(radius_mm / vox)) + 1
    )
    centres = np.argwhere(deep_wm)
    grid = np.indices(phantom.shape, dtype=np.float32)
    chi = phantom.chi.copy()
    rng = np.random.default_rng(seed)
    placed = 0
    for i in rng.permutation(len(centres)):
        ball = (
            sum((g - c) ** 2 for g, c in zip(grid, centres[i], strict=True))
            <= (radius_mm / vox) ** 2
        )
        if (phantom.labels[ball] == ph.WM).mean() < 0.9 or np.any(chi[ball] < -0.05):
            continue  # in white matter, not overlapping another sphere
        chi[ball] = value
        placed += 1
        if placed == n:
            return chi
    raise AssertionError(f"placed only {placed} of {n} spheres")


def _cortex_crop(phantom, mask, fraction):
    """The lateral ``fraction`` of the brain (one hemisphere's convexity): no deep grey
    nuclei, no midline veins."""
    xs = np.flatnonzero(phantom.brain_mask.any(axis=(1, 2)))
    crop = np.zeros_like(mask)
    crop[xs[0] : xs[0] + int(fraction * (xs[-1] - xs[0]))] = True
    out = mask & crop
    deep = np.isin(
        phantom.labels, [ph.PALLIDUM, ph.PUTAMEN, ph.CAUDATE, ph.THALAMUS, ph.SN, ph.RN, ph.VEIN]
    )
    assert out.sum() > 800 and not np.any(deep & out)
    return out


# --------------------------------------------------------------------------------------
# the truth
# --------------------------------------------------------------------------------------


def test_true_map_positive_negated_map_negative(phantom):
    chi, brain = phantom.chi, phantom.brain_mask
    ok = check_phase_sign(chi, brain, voxel_size=phantom.voxel_size)
    assert (ok.sign, ok.decision) == (1, "consistent") and ok.asymmetry > 0.9
    assert ok.positive_voxels >= ok.min_tail_voxels
    flipped = check_phase_sign(-chi, brain, voxel_size=phantom.voxel_size)
    assert (flipped.sign, flipped.decision) == (-1, "reversed")
    assert flipped.asymmetry == pytest.approx(-ok.asymmetry)
    assert flipped.skewness == pytest.approx(-ok.skewness, rel=1e-6)


def test_symmetric_noise_abstains(phantom):
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, phantom.chi.shape).astype(np.float32)
    check = check_phase_sign(noise, phantom.brain_mask)
    assert (check.sign, check.decision) == (0, "abstained") and abs(check.asymmetry) < 0.2
    assert check.threshold_ppm == pytest.approx(0.15, rel=0.05)  # 3 sigma of the noise
    assert check.as_dict()["voxels"] == check.voxels > 1000
    assert check.reason.startswith("abstained: tail asymmetry")


def test_the_decision_follows_the_documented_rule():
    """A synthetic map with chosen tail counts: 40 voxels at +0.2 ppm and k at -0.2 ppm
    in a 20^3 mask of zeros: the asymmetry is (40 - k) / (40 + k), decisive from 0.6."""
    mask = np.ones((20, 20, 20), bool)
    for k, sign in ((0, 1), (10, 1), (11, 0), (40, 0), (100, 0), (200, -1)):
        chi = np.zeros(mask.shape, np.float32)
        flat = chi.reshape(-1)
        flat[1000 : 1000 + 40] = 0.2
        flat[3000 : 3000 + k] = -0.2
        check = check_phase_sign(chi, mask, erode_voxels=0)
        assert check.asymmetry == pytest.approx((40 - k) / (40 + k))
        assert (check.positive_voxels, check.negative_voxels) == (40, k)
        assert check.sign == sign, k
    # a strong tail leaning the other way vetoes: 40 voxels at +0.1 ppm (between t and
    # 2 t) against 10 at -0.2 ppm: A = +0.6 but A2 = -1
    chi = np.zeros(mask.shape, np.float32)
    chi.reshape(-1)[1000:1040] = 0.1
    chi.reshape(-1)[3000:3010] = -0.2
    check = check_phase_sign(chi, mask, erode_voxels=0)
    assert (check.asymmetry, check.strong_asymmetry, check.sign) == (pytest.approx(0.6), -1, 0)
    assert "contradicted by the strong tails" in check.reason
    chi.reshape(-1)[3000:3010] = -0.1  # the same counts, no strong tails: decided
    assert check_phase_sign(chi, mask, erode_voxels=0).sign == 1
    # 15 voxels are fewer than the 20 needed: no decision however one-sided
    chi = np.zeros(mask.shape, np.float32)
    chi.reshape(-1)[:15] = 0.2
    assert check_phase_sign(chi, mask, erode_voxels=0).sign == 0
    # with 8 mm^3 voxels, 1 mL needs 125 voxels
    chi.reshape(-1)[:100] = 0.2
    assert check_phase_sign(chi, mask, erode_voxels=0).sign == 1
    check = check_phase_sign(chi, mask, erode_voxels=0, voxel_size=(2.0, 2.0, 2.0))
    assert (check.sign, check.min_tail_voxels) == (0, 125)


# --------------------------------------------------------------------------------------
# real reconstructions: clear cases are detected
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_clear_cases_are_detected(phantom, recon_mask, noise):
    chi = _tkd_map(phantom.chi, recon_mask, phantom.voxel_size, noise, seed=1)
    ok = check_phase_sign(chi, recon_mask, voxel_size=phantom.voxel_size)
    assert ok.sign == 1 and ok.asymmetry > 0.9, ok.reason
    bad = check_phase_sign(-chi, recon_mask, voxel_size=phantom.voxel_size)
    assert bad.sign == -1 and bad.asymmetry < -0.9, bad.reason


def test_a_reversed_oblique_subject_is_detected(phantom):
    """A simulated subject (moved, deformed, other nucleus values) on a grid tilted by 20
    degrees: B0 is oblique in voxel space."""
    from qsm_bids.core.kernels import b0_direction

    subj = ph.make_subject(phantom, seed=5, oblique_deg=20.0)
    mask = ndimage.binary_erosion(subj.brain_mask, iterations=1) & subj.tissue_mask
    b0 = tuple(b0_direction(subj.affine))
    chi = _tkd_map(subj.chi, mask, subj.voxel_size, 0.002, seed=2, b0=b0)
    assert check_phase_sign(chi, mask, voxel_size=subj.voxel_size).sign == 1
    assert check_phase_sign(-chi, mask, voxel_size=subj.voxel_size).sign == -1


def test_calcifications_do_not_hide_a_reversed_sign(phantom, recon_mask):
    """Five -1 ppm calcifications: they are left out as focal sources, so a negated map
    is still found reversed and the correct one consistent."""
    calc = _with_spheres(phantom, recon_mask, 5, 3.0, -1.0, seed=2)
    chi = _tkd_map(calc, recon_mask, phantom.voxel_size, 0.003, seed=3)
    ok = check_phase_sign(chi, recon_mask, voxel_size=phantom.voxel_size)
    assert ok.sign == 1 and ok.excluded_voxels > 0
    assert ok.skewness < -0.3  # the former skewness rule would have flipped this map
    assert check_phase_sign(-chi, recon_mask, voxel_size=phantom.voxel_size).sign == -1


# --------------------------------------------------------------------------------------
# weak or misleading evidence: a correct map is never flipped
# --------------------------------------------------------------------------------------

#: name -> (chi builder (phantom, recon mask) -> (chi, mask), field noise in ppm)
HARD_CASES = {
    "6 diamagnetic lesions": (lambda p, m: (_with_spheres(p, m, 6, 6.0, -0.1, 4), m), 0.002),
    "12 strong diamagnetic lesions": (
        lambda p, m: (_with_spheres(p, m, 12, 6.0, -0.15, 4), m),
        0.002,
    ),
    "20 strong diamagnetic lesions": (
        lambda p, m: (_with_spheres(p, m, 20, 6.0, -0.15, 4), m),
        0.002,
    ),
    "2 large calcifications": (lambda p, m: (_with_spheres(p, m, 2, 6.0, -1.5, 3), m), 0.002),
    "5 calcifications, low SNR": (
        lambda p, m: (_with_spheres(p, m, 5, 3.0, -1.0, 2), m),
        0.03,
    ),
    "cortex crop": (lambda p, m: (p.chi, _cortex_crop(p, m, 0.28)), 0.0),
    "cortex crop, noisy": (lambda p, m: (p.chi, _cortex_crop(p, m, 0.28)), 0.01),
    "lateral slab": (lambda p, m: (p.chi, _cortex_crop(p, m, 0.15)), 0.0),
    "low SNR": (lambda p, m: (p.chi, m), 0.03),
}


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_a_correct_map_is_never_flipped(phantom, recon_mask, case):
    build, noise = HARD_CASES[case]
    truth, mask = build(phantom, recon_mask)
    for seed in (5, 6):
        chi = _tkd_map(truth, mask, phantom.voxel_size, noise, seed=seed)
        check = check_phase_sign(chi, mask, voxel_size=phantom.voxel_size)
        assert check.sign >= 0, f"{case}: {check.reason}"
        assert check.decision in ("consistent", "abstained")


def test_the_strong_tail_saves_a_map_with_many_lesions(phantom, recon_mask):
    """20 lesions of -0.15 ppm (17 mL) outnumber the paramagnetic voxels 4 to 1 at t, so
    the tail count alone would flip the correct map; beyond 2 t the veins and nuclei
    still dominate and the check abstains."""
    lesions = _with_spheres(phantom, recon_mask, 20, 6.0, -0.15, 4)
    chi = _tkd_map(lesions, recon_mask, phantom.voxel_size, 0.002, seed=5)
    check = check_phase_sign(chi, recon_mask, voxel_size=phantom.voxel_size)
    assert check.asymmetry <= -check.margin and check.negative_voxels >= check.min_tail_voxels
    assert check.strong_asymmetry > 0 and check.sign == 0


def test_weak_evidence_abstains_where_the_skewness_misled(phantom, recon_mask):
    """The cases where the former rule (skewness beyond -0.3) flipped a correct map: the
    lateral slab and the strong lesions have a negative skewness, and the check now
    abstains on them, whichever the sign of the map."""
    slab = _cortex_crop(phantom, recon_mask, 0.15)
    lesions = _with_spheres(phantom, recon_mask, 12, 6.0, -0.15, 4)
    for truth, mask in ((phantom.chi, slab), (lesions, recon_mask)):
        chi = _tkd_map(truth, mask, phantom.voxel_size, 0.0, seed=7)
        for s in (1, -1):
            check = check_phase_sign(s * chi, mask, voxel_size=phantom.voxel_size)
            assert check.sign == 0 and check.decision == "abstained", check.reason
        assert check_phase_sign(chi, mask).skewness < -0.3


# --------------------------------------------------------------------------------------
# the pipeline node: keeps the sign, warns and records the evidence
# --------------------------------------------------------------------------------------


def _run_node(tmp_path, chi, mask, mode="auto"):
    from qsm_bids.interfaces.sign import CheckPhaseSign

    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    nb.Nifti1Image(chi.astype(np.float32), aff).to_filename(tmp_path / "chi.nii")
    nb.Nifti1Image(mask.astype(np.uint8), aff).to_filename(tmp_path / "mask.nii")
    node = CheckPhaseSign(chi=str(tmp_path / "chi.nii"), mask=str(tmp_path / "mask.nii"))
    node.inputs.mode = mode
    res = node.run(cwd=str(tmp_path))
    out = nb.load(res.outputs.chi).get_fdata()
    return res.outputs.sign, out, json.loads(res.outputs.report)


def test_node_abstains_keeps_the_sign_and_records_the_evidence(phantom, recon_mask, tmp_path):
    slab = _cortex_crop(phantom, recon_mask, 0.15)
    chi = _tkd_map(phantom.chi, slab, phantom.voxel_size, 0.0, seed=7)
    sign, out, report = _run_node(tmp_path, chi, slab)
    assert sign == 1 and report["Negated"] is False and report["Decision"] == "abstained"
    np.testing.assert_array_equal(out, chi)
    assert "abstained" in report["Warning"] and "--phase-sign" in report["Warning"]
    ev = report["Evidence"]
    assert ev["MinTailVoxels"] == 20 and ev["Margin"] == 0.6  # 1 mL = 16 voxels of 64 mm^3
    assert ev["PositiveTailVoxels"] < 20 and ev["NegativeTailVoxels"] < 20


def test_node_negates_a_reversed_map(phantom, recon_mask, tmp_path):
    chi = _tkd_map(phantom.chi, recon_mask, phantom.voxel_size, 0.003, seed=8)
    sign, out, report = _run_node(tmp_path, -chi, recon_mask)
    assert sign == -1 and report["Negated"] is True and report["Decision"] == "reversed"
    np.testing.assert_allclose(out, chi, atol=1e-6)
    assert "Warning" not in report and report["Evidence"]["TailAsymmetry"] < -0.9
    # a fixed sign is only reported, with a warning
    sign, out, report = _run_node(tmp_path, -chi, recon_mask, mode="1")
    assert sign == 1 and report["Negated"] is False and "--phase-sign -1" in report["Warning"]
