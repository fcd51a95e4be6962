"""Registration quality (Dice, field-of-view coverage, brain volume) and the decision to write
the AAL3 regional table.

The measures are checked on synthetic masks with known overlap; the decision on registrations
of the simulated 3 mm head phantom: the full head passes and gets its table, a cortex-only
crop of it (and a slab) fails, its table is skipped with a logged warning and the reason in
the transforms' JSON, unless forced.
"""

from __future__ import annotations

import json
import logging
import math
import os

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.bids.layout import Run
from qsm_bids.interfaces.registration import read_regionstats_status, read_registration_quality
from qsm_bids.registration.quality import (
    THRESHOLDS,
    RegistrationQuality,
    covered_fraction,
    dice_coefficient,
    mask_volume_mm3,
    measure_registration_quality,
    regionstats_decision,
)
from qsm_bids.registration.template import TEMPLATE_SPACE

os.environ.setdefault("NIPYPE_NO_ET", "1")

#: The smallest ANTs schedule (3 mm template): seconds per registration.
TINY = {"linear_iterations": (50, 20, 0), "linear_shrink_factors": (4, 2, 1),
        "linear_smoothing_vox": (2.0, 1.0, 0.0), "syn_iterations": (10, 5, 0),
        "syn_shrink_factors": (4, 2, 1), "syn_smoothing_vox": (2.0, 1.0, 0.0)}  # fmt: skip


# --------------------------------------------------------------------------- the measures
def _sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_dice_of_two_offset_spheres_matches_the_lens_volume():
    # two spheres of radius r whose centres are d apart overlap in a lens of volume
    # pi (4r + d)(2r - d)^2 / 12, so Dice = lens / sphere = (4r + d)(2r - d)^2 / (16 r^3)
    r, d = 20.0, 10.0
    a = _sphere((64, 64, 64), (32, 32, 32), r)
    b = _sphere((64, 64, 64), (32 + d, 32, 32), r)
    expected = (4 * r + d) * (2 * r - d) ** 2 / (16 * r**3)  # 0.6328
    assert dice_coefficient(a, b) == pytest.approx(expected, abs=0.005)
    assert dice_coefficient(a, a) == 1.0
    assert dice_coefficient(a, ~a) == 0.0
    assert dice_coefficient(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice_coefficient(a, b[1:])


def test_covered_fraction_of_a_sphere_cut_by_a_field_of_view():
    ball = _sphere((64, 64, 64), (31.5, 31.5, 31.5), 20.0)  # centre between voxels: symmetric
    fov = np.zeros_like(ball)
    fov[:, :, :32] = True  # half the volume, through the centre
    assert covered_fraction(ball, fov) == pytest.approx(0.5, abs=1e-12)
    # a slab of the central 2h of a sphere of radius r holds h (3r^2 - h^2) / (2 r^3)
    r, h = 20.0, 10.0
    fov = np.zeros_like(ball)
    fov[:, :, 22:42] = True
    assert covered_fraction(ball, fov) == pytest.approx(
        h * (3 * r**2 - h**2) / (2 * r**3), abs=0.01
    )
    assert covered_fraction(np.zeros_like(ball), fov) == 0.0


def test_mask_volume_uses_the_voxel_size():
    img = nb.Nifti1Image(np.ones((4, 5, 6), np.uint8), np.diag([2.0, 0.5, 3.0, 1.0]))
    assert mask_volume_mm3(img) == pytest.approx(4 * 5 * 6 * 3.0)


def test_quality_verdict_reasons_and_round_trip():
    good = RegistrationQuality(dice=0.93, coverage=0.99, brain_volume_ratio=0.6)
    assert good.passed and good.failures == ()
    assert regionstats_decision(good) == (True, "written")
    d = good.to_dict()
    assert d == {
        "Dice": 0.93,
        "Coverage": 0.99,
        "BrainVolumeRatio": 0.6,
        "Thresholds": THRESHOLDS,
        "Passed": True,
        "Failures": [],
    }
    assert RegistrationQuality.from_dict(json.loads(json.dumps(d))) == good

    crop = RegistrationQuality(dice=0.99, coverage=0.01, brain_volume_ratio=0.012)
    assert not crop.passed and len(crop.failures) == 2  # Dice is blind to a crop
    write, status = regionstats_decision(crop)
    assert not write and status.startswith("skipped: the field of view holds 1% of the template")
    assert "slab or crop" in status
    write, status = regionstats_decision(crop, force=True)
    assert write and status.startswith("written: forced (--force-regionstats) although")

    # each threshold on its own; exactly at the threshold passes; NaN never passes
    for key, field in (("Dice", "dice"), ("Coverage", "coverage"),
                       ("BrainVolumeRatio", "brain_volume_ratio")):  # fmt: skip
        at = RegistrationQuality(**{**good.__dict__, field: THRESHOLDS[key]})
        below = RegistrationQuality(**{**good.__dict__, field: THRESHOLDS[key] - 0.01})
        nan = RegistrationQuality(**{**good.__dict__, field: math.nan})
        assert at.passed and not below.passed and not nan.passed, key
    assert RegistrationQuality.from_dict(nan.to_dict()).brain_volume_ratio != 0.0


def test_regionstats_status_is_read_from_the_transforms_json(tmp_path):
    run = Run(
        subject="01", session="A", acquisition=None, run=None, suffix="MEGRE",
        phase_files=(tmp_path / "p.nii.gz",), magnitude_files=(), echo_times=(0.01,),
        field_strength=3.0, entities={"sub": "01", "ses": "A"},
    )  # fmt: skip
    assert read_regionstats_status(tmp_path, run) is None  # no registration
    xfm = tmp_path / "sub-01" / "ses-A" / "anat"
    xfm.mkdir(parents=True)
    xfm = xfm / f"sub-01_ses-A_from-orig_to-{TEMPLATE_SPACE}_mode-image_xfm.json"
    xfm.write_text("{}")
    assert read_regionstats_status(tmp_path, run) is None  # written before this key existed
    assert read_registration_quality(tmp_path, run) is None
    quality = RegistrationQuality(dice=0.9, coverage=0.02, brain_volume_ratio=0.01)
    doc = {"RegionalStatistics": "skipped: a crop", "RegistrationQuality": quality.to_dict()}
    xfm.write_text(json.dumps(doc))
    assert read_regionstats_status(tmp_path, run) == "skipped: a crop"
    assert read_registration_quality(tmp_path, run) == quality


# ------------------------------------------------------------- on registrations (slow)
@pytest.fixture(scope="module")
def subject():
    from qsm_bids.simulate import phantom as ph
    from qsm_bids.simulate.forward import simulate_acquisition

    base = ph.make_head_phantom(3.0)
    subj = ph.make_subject(base, seed=3, max_rotation_deg=10.0, deformation_mm=3.0)
    acq = simulate_acquisition(subj, snr=100.0, rng=5)
    return subj, acq


def _crop(subj) -> tuple[slice, slice, slice]:
    """A 51 x 51 x 42 mm block of the upper posterior cortex of the 3 mm phantom."""
    brain = subj.brain_mask
    xs, ys, zs = (np.where(brain.any(axis=tuple(a for a in range(3) if a != k)))[0]
                  for k in range(3))  # fmt: skip
    x0 = (xs.min() + xs.max()) // 2 + 2
    return (slice(x0, x0 + 17), slice(ys.min() + 4, ys.min() + 21), slice(zs.max() - 16,
            zs.max() - 2))  # fmt: skip


def _slab(subj) -> tuple[slice, slice, slice]:
    """Ten axial slices (30 mm) through the middle of the brain."""
    zs = np.where(subj.brain_mask.any(axis=(0, 1)))[0]
    zc = (zs.min() + zs.max()) // 2
    return (slice(None), slice(None), slice(zc - 5, zc + 5))


def _cut(data: np.ndarray, affine: np.ndarray, sl) -> tuple[np.ndarray, np.ndarray]:
    start = np.array([s.start or 0 for s in sl], dtype=np.float64)
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return data[sl], out


@pytest.mark.slow
@pytest.mark.xdist_group("e2e")
def test_quality_of_full_head_slab_and_crop(subject, tmp_path):
    from qsm_bids.registration.ants_registration import register_to_template
    from qsm_bids.registration.template import load_template, load_template_mask

    subj, acq = subject
    mag = acq.magnitude.mean(axis=-1)
    everything = (slice(None),) * 3
    results = {}
    for name, sl in (("full", everything), ("slab", _slab(subj)), ("crop", _crop(subj))):
        m, aff = _cut(subj.brain_mask.astype(np.uint8), subj.affine, sl)
        g, _ = _cut(mag, subj.affine, sl)
        mask = nb.Nifti1Image(m, aff)
        res = register_to_template(
            nb.Nifti1Image(g, aff), load_template(3), out_dir=tmp_path / name,
            brain_mask=mask, template_mask=load_template_mask(3), **TINY,
        )  # fmt: skip
        results[name] = measure_registration_quality(mask, res, load_template_mask(3))
    full, slab, crop = results["full"], results["slab"], results["crop"]
    assert full.passed, full
    assert full.dice > 0.9 and full.coverage > 0.97 and full.brain_volume_ratio > 0.9
    # the slab holds about a third of the brain, the crop a few per cent
    assert not slab.passed and 0.2 < slab.coverage < 0.45, slab
    assert not crop.passed and crop.coverage < 0.15 and crop.brain_volume_ratio < 0.1, crop


def _run_workflow(subj, acq, tmp_path, sl, *, force: bool = False, stale: bool = False):
    """The registration workflow with derivatives on (a block of) the phantom."""
    from qsm_bids.pipeline.registration import init_registration_wf

    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    phase, aff = _cut(acq.phase[..., 0], subj.affine, sl)
    phase_file = anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz"
    nb.Nifti1Image(phase, aff).to_filename(str(phase_file))
    work = tmp_path / "work"
    work.mkdir()
    paths = {}
    for key, data in {
        "magnitude": acq.magnitude,
        "mask": subj.brain_mask.astype(np.uint8),
        "chi": np.where(subj.brain_mask, subj.chi, 0).astype(np.float32),
    }.items():
        paths[key] = str(work / f"{key}.nii")
        nb.Nifti1Image(_cut(data, subj.affine, sl)[0], aff).to_filename(paths[key])
    run = Run(
        subject="01", session=None, acquisition=None, run=None, suffix="MEGRE",
        phase_files=(phase_file,), magnitude_files=(), echo_times=acq.echo_times_s,
        field_strength=3.0, entities={"sub": "01"},
    )  # fmt: skip
    out = tmp_path / "derivatives"
    table = out / "sub-01" / "anat" / "sub-01_desc-aal3_regionstats.tsv"
    if stale:  # a table of an earlier run at the same path
        table.parent.mkdir(parents=True)
        table.write_text("region\tlabel\nold\t1\n")
        table.with_suffix(".json").write_text("{}")
    wf = init_registration_wf(
        template_resolution_mm=3.0,
        registration_resolution_mm=3.0,
        registration_params=TINY,
        run=run,
        output_dir=out,
        bids_dir=bids,
        force_regionstats=force,
    )
    wf.base_dir = str(tmp_path / "nipype")
    for key, value in paths.items():
        setattr(wf.get_node("inputnode").inputs, key, value)
    wf.run(plugin="Linear")
    xfm = out / "sub-01" / "anat" / f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_xfm.json"
    doc = json.loads(xfm.read_text())
    assert read_regionstats_status(out, run) == doc["RegionalStatistics"]
    assert read_registration_quality(out, run).to_dict() == doc["RegistrationQuality"]
    return doc, table


@pytest.mark.slow
@pytest.mark.xdist_group("e2e")
def test_full_head_writes_the_table_and_a_crop_skips_it(subject, tmp_path, caplog):
    from qsm_bids.interfaces.registration import read_regionstats_tsv

    subj, acq = subject
    caplog.set_level(logging.INFO, logger="qsm_bids")

    # the full head: passes, table written, no warning
    doc, table = _run_workflow(subj, acq, tmp_path / "full", (slice(None),) * 3)
    q = doc["RegistrationQuality"]
    assert q["Passed"] is True and q["Failures"] == [] and q["Thresholds"] == THRESHOLDS
    assert q["Dice"] > 0.9 and q["Coverage"] > 0.97
    assert doc["RegionalStatistics"] == "written"
    rows = read_regionstats_tsv(table)
    assert rows[0]["region"] == "whole_brain" and rows[0]["voxels"] == subj.brain_mask.sum()
    labels = {r["label"] for r in rows}
    assert not labels & {35, 36, 81, 82}  # AAL3's retired labels are not listed
    assert {"Thalamus_L", "Thalamus_R"}.isdisjoint(r["region"] for r in rows)
    assert json.loads(table.with_suffix(".json").read_text())["RegistrationQuality"] == q
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # a cortex-only crop, with a table of an earlier run in place: no table, the reason
    # recorded and logged; the template-space map and the transforms are still written
    caplog.clear()
    doc, table = _run_workflow(subj, acq, tmp_path / "crop", _crop(subj), stale=True)
    q = doc["RegistrationQuality"]
    assert q["Passed"] is False and q["Coverage"] < 0.15 and q["BrainVolumeRatio"] < 0.1
    status = doc["RegionalStatistics"]
    assert status.startswith("skipped: ") and "slab or crop" in status
    assert not table.exists() and not table.with_suffix(".json").exists()
    anat = table.parent
    chi_t = anat / f"sub-01_space-{TEMPLATE_SPACE}_Chimap.nii.gz"
    assert chi_t.exists()
    assert all((anat / f).exists() for f in doc["FromOrigToTemplate"]["Transforms"])
    side = json.loads(chi_t.with_name(chi_t.name.replace(".nii.gz", ".json")).read_text())
    assert side["RegistrationQuality"] == q
    assert side["Warnings"][0].startswith("AAL3 regional table not written")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "AAL3 regional table not written" in warned[0]
    assert "field of view holds" in warned[0] and "still written" in warned[0]

    # forced: the crop's table is written, and the status says it was forced
    doc, table = _run_workflow(subj, acq, tmp_path / "forced", _crop(subj), force=True)
    assert doc["RegistrationQuality"]["Passed"] is False
    assert doc["RegionalStatistics"].startswith("written: forced")
    assert table.exists() and read_regionstats_tsv(table)[0]["region"] == "whole_brain"
