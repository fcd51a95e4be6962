"""Registration of a simulated subject to MNI152NLin2009aSym and AAL3 regional statistics.

The subject is the built-in head phantom (MNI152 2009a + AAL3 deep grey nuclei) moved by a
random rotation/translation and a smooth random deformation; its true segmentation gives the
Dice overlap of the registered atlas and the true regional susceptibility.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.bids.layout import Run
from qsm_bids.interfaces.registration import read_regionstats_tsv
from qsm_bids.registration.atlas import (
    AAL3_DEEP_GREY,
    AAL3_RETIRED,
    aal3_listed_names,
    aal3_names,
    dseg_tsv,
    load_aal3,
    merge_labels,
)
from qsm_bids.registration.template import (
    TEMPLATE_SPACE,
    load_template,
    load_template_mask,
)
from qsm_bids.simulate import phantom as ph

os.environ.setdefault("NIPYPE_NO_ET", "1")

#: Phantom labels of the deep grey regions (merged over hemispheres).
TRUTH = {
    "caudate": ph.CAUDATE,
    "putamen": ph.PUTAMEN,
    "pallidum": ph.PALLIDUM,
    "thalamus": ph.THALAMUS,
    "substantia_nigra": ph.SN,
    "red_nucleus": ph.RN,
}
#: A quick schedule for tests (the defaults are for real data).
FAST = {"linear_iterations": (200, 100, 50, 0), "syn_iterations": (60, 40, 20, 0)}
TINY = {"linear_iterations": (50, 20, 0), "linear_shrink_factors": (4, 2, 1),
        "linear_smoothing_vox": (2.0, 1.0, 0.0), "syn_iterations": (10, 5, 0),
        "syn_shrink_factors": (4, 2, 1), "syn_smoothing_vox": (2.0, 1.0, 0.0)}  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def subject():
    from qsm_bids.simulate.forward import simulate_acquisition

    base = ph.make_head_phantom(2.0)
    subj = ph.make_subject(base, seed=3, max_rotation_deg=10.0, deformation_mm=3.0)
    acq = simulate_acquisition(subj, snr=100.0, rng=5)
    return subj, acq


def test_template_and_atlas_are_offline_and_aligned():
    tpl = load_template(2)
    mask = load_template_mask(2)
    assert tpl.shape == mask.shape == (99, 117, 95)
    assert np.allclose(tpl.affine[:3, 3], (-98.0, -134.0, -72.0))
    assert TEMPLATE_SPACE == "MNI152NLin2009aSym"
    atlas, names = load_aal3(1)
    assert atlas.shape == load_template(1).shape
    assert names[77] == "Putamen_L" and names[166] == "Red_N_R" and len(names) == 166
    # AAL3's retired labels (Cingulate_Ant 35/36, Thalamus 81/82) have no voxel: not listed
    assert set(AAL3_RETIRED) == set(aal3_listed_names()) - set(names)
    assert "Thalamus_L" not in names.values() and "Thalamus_R" not in names.values()
    data = np.asarray(atlas.dataobj)
    # the AAL3 putamen lies inside the template brain mask and around x = +-25 mm
    put = np.isin(data, (77, 78))
    assert (np.asarray(load_template_mask(1).dataobj)[put] > 0).mean() > 0.99
    xs = (atlas.affine @ np.c_[np.argwhere(put), np.ones(put.sum())].T)[0]
    assert 20 < np.abs(xs).mean() < 30
    text = dseg_tsv(names)
    assert text.startswith("index\tname\n1\tPrecentral_L\n")
    merged, mnames = merge_labels(data, AAL3_DEEP_GREY)
    assert mnames[2] == "putamen" and ((merged == 2) == put).all()


def test_registration_workflow_on_phantom(subject, tmp_path):
    from qsm_bids.pipeline.registration import init_registration_wf

    subj, acq = subject
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    aff = subj.affine
    phase_file = anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz"
    nb.Nifti1Image(acq.phase[..., 0], aff).to_filename(str(phase_file))
    work = tmp_path / "work"
    work.mkdir()
    paths = {}
    for key, data in {
        "magnitude": acq.magnitude,
        "mask": subj.brain_mask.astype(np.uint8),
        "chi": np.where(subj.brain_mask, subj.chi, 0).astype(np.float32),  # the TRUE chi
    }.items():
        paths[key] = str(work / f"{key}.nii")
        nb.Nifti1Image(data, aff).to_filename(paths[key])
    run = Run(
        subject="01", session=None, acquisition=None, run=None, suffix="MEGRE",
        phase_files=(phase_file,), magnitude_files=(), echo_times=acq.echo_times_s,
        field_strength=3.0, entities={"sub": "01"},
    )  # fmt: skip
    out = tmp_path / "derivatives"
    wf = init_registration_wf(
        template_resolution_mm=2.0,
        registration_params=FAST,
        run=run,
        output_dir=out,
        bids_dir=bids,
    )
    wf.base_dir = str(tmp_path / "nipype")
    for key, value in paths.items():
        setattr(wf.get_node("inputnode").inputs, key, value)
    wf.run(plugin="Linear")

    anat_out = out / "sub-01" / "anat"
    names = sorted(p.name for p in anat_out.iterdir())
    expected = [
        f"sub-01_space-{TEMPLATE_SPACE}_Chimap.nii.gz",
        f"sub-01_space-{TEMPLATE_SPACE}_Chimap.json",
        "sub-01_desc-aal3_dseg.nii.gz",
        "sub-01_desc-aal3_dseg.json",
        "sub-01_desc-aal3_dseg.tsv",
        f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_desc-affine_xfm.mat",
        f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_desc-warp_xfm.nii.gz",
        f"sub-01_from-{TEMPLATE_SPACE}_to-orig_mode-image_desc-warp_xfm.nii.gz",
        f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_xfm.json",
        "sub-01_desc-aal3_regionstats.tsv",
        "sub-01_desc-aal3_regionstats.json",
    ]
    assert sorted(expected) == names
    assert not [p for p in anat_out.iterdir() if p.name.startswith(".")]  # no temporaries
    assert (anat_out / "sub-01_desc-aal3_dseg.tsv").read_text() == dseg_tsv(aal3_names())
    side = json.loads((anat_out / f"sub-01_space-{TEMPLATE_SPACE}_Chimap.json").read_text())
    assert side["Units"] == "ppm" and side["Registration"]["RandomSeed"] == 1234
    cols = json.loads((anat_out / "sub-01_desc-aal3_regionstats.json").read_text())
    assert cols["mean_ppm"]["Units"] == "ppm" and cols["volume_mm3"]["Units"] == "mm^3"
    xfm = json.loads((anat_out / f"sub-01_from-orig_to-{TEMPLATE_SPACE}_mode-image_xfm.json")
                     .read_text())  # fmt: skip
    assert xfm["FromTemplateToOrig"]["Invert"] == [True, False]
    quality = xfm["RegistrationQuality"]
    assert quality["Passed"] is True and quality["Dice"] > 0.9 and quality["Coverage"] > 0.97
    assert xfm["RegionalStatistics"] == "written"
    assert all((anat_out / f).exists() for f in xfm["FromOrigToTemplate"]["Transforms"])

    # (1) atlas in subject space vs the true segmentation (AAL3 left/right merged)
    dseg = nb.load(anat_out / "sub-01_desc-aal3_dseg.nii.gz")
    assert np.allclose(dseg.affine, aff, atol=1e-4)
    merged, mnames = merge_labels(np.asarray(dseg.dataobj), AAL3_DEEP_GREY)
    dice = {n: _dice(merged == k, subj.labels == TRUTH[n]) for k, n in mnames.items()}
    for name in ("putamen", "caudate", "thalamus"):
        assert dice[name] >= 0.7, dice

    # (2) regional means of the TRUE chi with the registered atlas vs the true values
    rows = read_regionstats_tsv(anat_out / "sub-01_desc-aal3_regionstats.tsv")
    assert rows[0]["region"] == "whole_brain" and rows[0]["voxels"] == subj.brain_mask.sum()
    by_label = {r["label"]: r for r in rows}
    for name, labels in AAL3_DEEP_GREY.items():
        sel = [by_label[k] for k in labels if by_label[k]["voxels"] > 0]
        n = sum(r["voxels"] for r in sel)
        mean = sum(r["mean_ppm"] * r["voxels"] for r in sel) / n
        true = float(subj.chi[subj.labels == TRUTH[name]].mean())
        assert abs(mean - true) < 0.02, (name, mean, true)

    # (3) chi in template space: the deep grey nuclei land on the atlas' nuclei
    chi_t = nb.load(anat_out / f"sub-01_space-{TEMPLATE_SPACE}_Chimap.nii.gz")
    assert chi_t.shape == load_template(2).shape
    assert np.allclose(chi_t.affine, load_template(2).affine)
    atlas2, _ = load_aal3(2)
    merged_t, _ = merge_labels(np.asarray(atlas2.dataobj), AAL3_DEEP_GREY)
    chi_t_data = np.asarray(chi_t.dataobj)
    for k, name in mnames.items():
        true = float(subj.chi[subj.labels == TRUTH[name]].mean())
        assert abs(float(chi_t_data[merged_t == k].mean()) - true) < 0.02, name


def test_registration_is_deterministic(subject, tmp_path):
    from qsm_bids.registration.ants_registration import (
        atlas_to_subject,
        register_to_template,
        to_template_space,
    )

    subj, acq = subject
    mag = nb.Nifti1Image(acq.magnitude, subj.affine)
    mask = nb.Nifti1Image(subj.brain_mask.astype(np.uint8), subj.affine)
    chi = nb.Nifti1Image(subj.chi, subj.affine)
    tpl = load_template(3)
    atlas, _ = load_aal3(3)
    outs = []
    for i in range(2):
        res = register_to_template(
            mag, tpl, out_dir=tmp_path / f"r{i}", brain_mask=mask, seed=7, threads=1, **TINY
        )
        assert res.to_template_invert == (False, False)
        arrays = [np.asarray(nb.load(f).dataobj) for f in res.files if f.endswith(".nii.gz")]
        arrays.append(np.frombuffer(Path(res.files[1]).read_bytes(), dtype=np.uint8))  # .mat
        arrays.append(np.asarray(to_template_space(chi, tpl, res).dataobj))
        dseg = atlas_to_subject(atlas, mask, res, interpolation="nearestNeighbor")
        arrays.append(np.asarray(dseg.dataobj))
        outs.append(arrays)
    assert len(outs[0]) == 5
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


def test_registration_via_t1w(subject, tmp_path):
    """A T1w path: T1w -> GRE rigid and T1w -> template composed (smoke test, 3 mm)."""
    from qsm_bids.registration.ants_registration import atlas_to_subject, register_to_template

    subj, acq = subject
    # a T1-like contrast (CSF dark, WM bright, scalp visible) on the subject's grid
    t1 = np.where(subj.head_mask, 1.1 - subj.m0, 0.0).astype(np.float32)
    t1[subj.labels == ph.SCALP] = 0.5
    mask = nb.Nifti1Image(subj.brain_mask.astype(np.uint8), subj.affine)
    res = register_to_template(
        nb.Nifti1Image(acq.magnitude, subj.affine),
        load_template(3),
        out_dir=tmp_path,
        brain_mask=mask,
        t1w=nb.Nifti1Image(t1, subj.affine),
        **TINY,
    )
    assert [Path(f).name for f in res.to_subject] == [
        "t1w_to_gre_0GenericAffine.mat",
        "t1w_to_template_0GenericAffine.mat",
        "t1w_to_template_1InverseWarp.nii.gz",
    ]
    assert res.to_template_invert == (False, False, True)
    atlas, _ = load_aal3(2)
    dseg = atlas_to_subject(atlas, mask, res, interpolation="nearestNeighbor")
    merged, mnames = merge_labels(np.asarray(dseg.dataobj), AAL3_DEEP_GREY)
    k = {n: k for k, n in mnames.items()}
    assert _dice(merged == k["thalamus"], subj.labels == ph.THALAMUS) > 0.6
