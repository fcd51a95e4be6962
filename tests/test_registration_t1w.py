"""Registration through a T1w of the same session (T1w -> GRE rigid, T1w -> template, composed).

A 2 mm GRE dataset of the head phantom is simulated with a 1 mm T1w on its own grid, taken
with the head moved by a few degrees and millimetres; the truth gives the T1w -> GRE rigid map
and the subject's labels and susceptibility. The atlas brought into GRE space through the T1w
must overlap the true deep grey nuclei and give their true mean susceptibility.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.registration.atlas import AAL3_DEEP_GREY, load_aal3, merge_labels
from qsm_bids.registration.template import TEMPLATE_SPACE, load_template, load_template_mask
from qsm_bids.simulate import phantom as ph
from qsm_bids.simulate.dataset import TRUTH_NAME, simulate_dataset

os.environ.setdefault("NIPYPE_NO_ET", "1")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registration_t1w")]

#: Phantom labels of the deep grey regions checked (AAL3 left/right merged).
TRUTH = {"caudate": ph.CAUDATE, "putamen": ph.PUTAMEN, "thalamus": ph.THALAMUS}
#: A quick schedule for tests (as in test_registration.py).
FAST = {"linear_iterations": (200, 100, 50, 0), "syn_iterations": (60, 40, 20, 0)}
ANAT = Path("sub-01") / "anat"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _deep_grey_dice(dseg: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    merged, names = merge_labels(dseg, AAL3_DEEP_GREY)
    return {n: _dice(merged == k, truth == TRUTH[n]) for k, n in names.items() if n in TRUTH}


def _rigid_error_mm(mat: str, to_subject: np.ndarray, mask: nb.Nifti1Image) -> np.ndarray:
    """Distances (mm) between the estimated and the true T1w position of GRE brain voxels.

    ``mat`` is the ANTs rigid of a registration with the GRE fixed and the T1w moving: it maps
    GRE points to T1w points (ITK LPS coordinates); ``to_subject`` maps T1w world points to
    GRE world points (RAS)."""
    import ants
    import pandas as pd

    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)[::20]
    x = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    inv = np.linalg.inv(to_subject)
    y_true = x @ inv[:3, :3].T + inv[:3, 3]
    lps = pd.DataFrame(x * [-1.0, -1.0, 1.0], columns=["x", "y", "z"])
    y = ants.apply_transforms_to_points(3, lps, [mat], whichtoinvert=[False])
    return np.linalg.norm(y[["x", "y", "z"]].to_numpy() * [-1.0, -1.0, 1.0] - y_true, axis=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("t1w")
    bids = simulate_dataset(
        root / "bids", subjects=1, resolution_mm=2.0, seed=2, t1w=True, phantom="ideal"
    )
    return root, bids


def test_t1w_path_through_the_registration_workflow(dataset):
    from qsm_bids.bids.layout import find_runs
    from qsm_bids.config import Config, ExecutionSettings
    from qsm_bids.interfaces.registration import read_regionstats_tsv
    from qsm_bids.pipeline.base import init_qsm_wf
    from qsm_bids.pipeline.registration import init_registration_wf
    from qsm_bids.recipe import load_recipe

    root, bids = dataset
    truth_dir = bids / "derivatives" / TRUTH_NAME / ANAT
    t1_img = nb.load(bids / ANAT / "sub-01_T1w.nii.gz")
    mag_img = nb.load(bids / ANAT / "sub-01_echo-1_part-mag_MEGRE.nii.gz")
    # the T1w lies on its own grid (1 mm), not the GRE's (2 mm)
    assert t1_img.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    assert mag_img.header.get_zooms()[:3] == (2.0, 2.0, 2.0)

    # the layout finds the T1w beside the GRE, and the participant workflow passes it on
    run = find_runs(bids)[0]
    assert run.t1w is not None and run.t1w.name == "sub-01_T1w.nii.gz"
    config = Config(execution=ExecutionSettings(bids_dir=bids, output_dir=root / "o"))
    qsm_wf = init_qsm_wf(run, config, recipe=load_recipe("default"))
    assert qsm_wf.get_node("registration_wf.inputnode").inputs.t1w == str(run.t1w)

    # inputs of the registration branch: echo-averaged magnitude, true mask and true chi
    work = root / "inputs"
    work.mkdir()
    mags = [bids / ANAT / f"sub-01_echo-{n}_part-mag_MEGRE.nii.gz" for n in range(1, 5)]
    mag = np.mean([nb.load(p).get_fdata(dtype=np.float32) for p in mags], axis=0)
    mask_img = nb.load(truth_dir / "sub-01_desc-brain_mask.nii.gz")
    brain = np.asarray(mask_img.dataobj) > 0
    chi_true = np.asarray(nb.load(truth_dir / "sub-01_Chimap.nii.gz").dataobj, dtype=np.float32)
    labels = np.asarray(nb.load(truth_dir / "sub-01_dseg.nii.gz").dataobj).astype(np.int16)
    paths = {}
    for key, data in {
        "magnitude": mag,
        "mask": brain.astype(np.uint8),
        "chi": np.where(brain, chi_true, 0).astype(np.float32),
    }.items():
        paths[key] = str(work / f"{key}.nii")
        nb.Nifti1Image(data, mag_img.affine).to_filename(paths[key])
    paths["t1w"] = str(run.t1w)

    out = root / "derivatives"
    wf = init_registration_wf(
        template_resolution_mm=2.0,
        registration_params=FAST,
        run=run,
        output_dir=out,
        bids_dir=bids,
    )
    wf.base_dir = str(root / "nipype")
    for key, value in paths.items():
        setattr(wf.get_node("inputnode").inputs, key, value)
    wf.run(plugin="Linear")

    # (1) the outputs record the T1w: its transforms, and ViaT1w in the sidecars
    anat_out = out / ANAT
    xfm = json.loads(
        (anat_out / f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_xfm.json").read_text()
    )
    assert xfm["Registration"]["ViaT1w"] is True
    to_orig = xfm["FromTemplateToOrig"]["Transforms"]
    assert len(to_orig) == 3 and "from-T1w_to-orig" in to_orig[0]
    assert xfm["FromTemplateToOrig"]["Invert"] == [False, True, False]
    assert all((anat_out / f).is_file() for f in xfm["FromOrigToTemplate"]["Transforms"])
    side = json.loads((anat_out / f"sub-01_space-{TEMPLATE_SPACE}_Chimap.json").read_text())
    assert side["Registration"]["ViaT1w"] is True

    # (2) the T1w -> GRE rigid recovers the head motion between the scans (about 4 mm)
    true_xfm = json.loads((truth_dir / "sub-01_from-T1w_to-orig_mode-image_xfm.json").read_text())
    err = _rigid_error_mm(str(anat_out / to_orig[0]), np.array(true_xfm["Matrix"]), mask_img)
    motion = np.linalg.norm(true_xfm["TranslationMM"])
    print(f"T1w->GRE rigid error {err.mean():.2f} mm (max {err.max():.2f}), motion {motion:.1f} mm")
    assert motion > 1.0 and err.mean() < 0.5 and err.max() < 1.0, (motion, err.mean())

    # (3) the atlas in GRE space vs the true labels (reached 0.84, 0.80, 0.89)
    dseg = nb.load(anat_out / "sub-01_desc-aal3_dseg.nii.gz")
    assert np.allclose(dseg.affine, mag_img.affine, atol=1e-4)
    dice = _deep_grey_dice(np.asarray(dseg.dataobj), labels)
    print("Dice via T1w", dice)
    assert min(dice.values()) >= 0.7, dice

    # (4) regional means of the TRUE chi with the registered atlas vs the true means
    rows = read_regionstats_tsv(anat_out / "sub-01_desc-aal3_regionstats.tsv")
    by_label = {r["label"]: r for r in rows}
    for name, true_label in TRUTH.items():
        sel = [by_label[k] for k in AAL3_DEEP_GREY[name] if by_label[k]["voxels"] > 0]
        n = sum(r["voxels"] for r in sel)
        mean = sum(r["mean_ppm"] * r["voxels"] for r in sel) / n
        true = float(chi_true[labels == true_label].mean())
        print(f"{name}: {mean:+.4f} vs true {true:+.4f} ppm")
        assert abs(mean - true) < 0.02, (name, mean, true)


def test_t1w_on_a_very_different_grid(tmp_path):
    """A sagittal T1w (1 x 1 x 2.5 mm, PIR axes, cropped field of view) taken after a larger
    head motion (up to 10 degrees and 8 mm) still registers through the T1w path."""
    from qsm_bids.registration.ants_registration import atlas_to_subject, register_to_template
    from qsm_bids.simulate.forward import simulate_acquisition

    subj = ph.make_subject(ph.make_head_phantom(2.0), seed=11, max_rotation_deg=10.0)
    acq = simulate_acquisition(subj, snr=100.0, rng=3)
    scan = ph.make_subject_t1w(
        subj,
        seed=5,
        voxel_size_mm=(1.0, 1.0, 2.5),
        orientation="PIR",
        fov_mm=(220.0, 200.0, 170.0),
        max_rotation_deg=10.0,
        max_translation_mm=8.0,
    )
    t1 = nb.Nifti1Image(scan.image, scan.affine)
    assert nb.aff2axcodes(t1.affine) == ("P", "I", "R")
    assert scan.rotation_deg > 3.0
    mask = nb.Nifti1Image(subj.brain_mask.astype(np.uint8), subj.affine)
    res = register_to_template(
        nb.Nifti1Image(acq.magnitude, subj.affine),
        load_template(2),
        out_dir=tmp_path,
        brain_mask=mask,
        template_mask=load_template_mask(2),
        t1w=t1,
        **FAST,
    )
    assert res.parameters["ViaT1w"] is True
    err = _rigid_error_mm(res.to_subject[0], scan.to_subject, mask)
    print(f"rigid error {err.mean():.2f} mm (max {err.max():.2f}), {scan.rotation_deg:.1f} deg")
    assert err.mean() < 0.5 and err.max() < 1.0, err.mean()
    atlas, _ = load_aal3(1)
    dseg = atlas_to_subject(atlas, mask, res, interpolation="nearestNeighbor")
    dice = _deep_grey_dice(np.asarray(dseg.dataobj), subj.labels)
    print("Dice, sagittal T1w", dice)
    assert min(dice.values()) >= 0.7, dice  # reached 0.86, 0.86, 0.90
