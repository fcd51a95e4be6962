"""End to end: simulate a 2 mm head-phantom dataset (the realistic phantom, no inverse
crime), run the participant level through the command line, and bound the susceptibility
map's error against the phantom's truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.cli.main import main
from qsm_bids.evaluate import DEEP_GREY, evaluate_against_truth
from qsm_bids.simulate.dataset import simulate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]

ANAT = Path("sub-01") / "anat"
#: NRMSE bound (%) of the default pipeline on the realistic phantom at 2 mm, axial 3 T
#: (seed 1, SNR 40). Measured 2026-12-04: 48.3 % (nltv, weak harmonics, automatic weight);
#: the same data with the old default (workflows/medi.toml) 53.7 %, with tv 56.8 %. The
#: bound sits between the default and MEDI (1.15 x measured, 55.5, would let MEDI pass).
E2E_NRMSE_BOUND = 51.0
#: bound (ppm) on the deep-grey region errors there: measured at most 0.0261 (substantia
#: nigra, underestimated; all six are), 2026-12-04
E2E_REGION_BOUND_PPM = 0.030


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    bids = simulate_dataset(
        root / "bids", subjects=1, resolution_mm=2.0, seed=1, phantom="realistic"
    )
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2"])
    return bids, out, root, code


def test_participant_run_succeeds(e2e):
    _, out, _, code = e2e
    assert code == 0
    names = sorted(p.name for p in (out / ANAT).iterdir())
    for suffix in (
        "Chimap",
        "desc-brain_mask",
        "desc-local_mask",
        "desc-total_fieldmap",
        "desc-local_fieldmap",
        "R2starmap",
        "T2starmap",
    ):
        assert f"sub-01_{suffix}.nii.gz" in names
        assert f"sub-01_{suffix}.json" in names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]


def test_outputs_are_on_the_input_grid_with_provenance(e2e):
    bids, out, _, _ = e2e
    raw = nb.load(bids / ANAT / "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    chi = nb.load(out / ANAT / "sub-01_Chimap.nii.gz")
    assert chi.shape == raw.shape
    np.testing.assert_allclose(chi.affine, raw.affine, atol=1e-5)
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    assert side["Units"] == "ppm"
    assert side["SkullStripped"] is True
    assert any(s.startswith("bids:raw:sub-01/anat/") for s in side["Sources"])
    stages = {name: stage["Algorithm"] for name, stage in side["Stages"].items()}
    assert stages["inversion"] == "nltv"  # the default since 2026-12
    for algo in ("pdf", "region_growing", "weighted_fit"):
        assert algo in stages.values()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "qsm_bids"
    r2 = np.asarray(nb.load(out / ANAT / "sub-01_R2starmap.nii.gz").dataobj)
    brain = np.asarray(nb.load(out / ANAT / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    assert 10 < np.median(r2[brain]) < 60  # 1/s at 3 T


def test_susceptibility_accuracy_against_truth(e2e):
    bids, out, _, _ = e2e
    ev = evaluate_against_truth(
        out / ANAT / "sub-01_Chimap.nii.gz",
        bids / "derivatives" / "qsm_bids-truth",
        "01",
        mask=out / ANAT / "sub-01_desc-local_mask.nii.gz",
    )
    print(f"e2e NRMSE {ev.nrmse_percent:.1f} %\n{ev.table()}")
    # reached 48.3 (realistic phantom; PDF + nltv + two relaxed feedback passes)
    assert ev.nrmse_percent < E2E_NRMSE_BOUND
    errors = ev.region_errors()
    for region in DEEP_GREY:
        assert abs(errors[region]) < E2E_REGION_BOUND_PPM, f"{region}: {errors[region]:+.4f} ppm"


def test_rerun_into_same_output_reuses_and_keeps_outputs_identical(e2e):
    bids, out, root, _ = e2e
    before = {p.name: p.read_bytes() for p in (out / ANAT).iterdir() if p.suffix == ".json"}
    chi_before = np.asarray(nb.load(out / ANAT / "sub-01_Chimap.nii.gz").dataobj)
    names_before = sorted(p.name for p in (out / ANAT).iterdir())
    (out / ANAT / "sub-01_T2starmap.nii.gz").unlink()  # a lost output is restored
    code = main([str(bids), str(out), "participant", "--participant-label", "sub-01",
                 "-w", str(root / "work")])  # fmt: skip
    assert code == 0
    after = {p.name: p.read_bytes() for p in (out / ANAT).iterdir() if p.suffix == ".json"}
    assert before == after
    assert (out / ANAT / "sub-01_T2starmap.nii.gz").is_file()
    chi_after = np.asarray(nb.load(out / ANAT / "sub-01_Chimap.nii.gz").dataobj)
    np.testing.assert_array_equal(chi_before, chi_after)
    assert sorted(p.name for p in (out / ANAT).iterdir()) == names_before


def test_real_7t_crop_runs_and_is_plausible(shared_dir, tmp_path):
    """A real 7T scan (no ground truth): arbitrary-unit phase is recognised, the run
    finishes, and the maps are finite with |chi| well under 1 ppm."""
    bids = shared_dir / "data" / "real-7t-crop"
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--no-registration"])  # fmt: skip
    assert code == 0
    anat = out / "sub-crop" / "anat"
    chi = np.asarray(nb.load(anat / "sub-crop_Chimap.nii.gz").dataobj)
    mask = np.asarray(nb.load(anat / "sub-crop_desc-local_mask.nii.gz").dataobj) > 0
    assert mask.mean() > 0.3
    assert np.isfinite(chi).all()
    lo, hi = np.percentile(chi[mask], [1, 99])
    assert -0.5 < lo < 0 < hi < 0.5
    side = json.loads((anat / "sub-crop_Chimap.json").read_text())
    assert "arbitrary" in json.dumps(side["ProcessingNotes"]).lower()


def test_user_mask_file_replaces_the_mask_stage(e2e):
    bids, _, root, _ = e2e
    truth = bids / "derivatives" / "qsm_bids-truth" / ANAT / "sub-01_desc-brain_mask.nii.gz"
    img = nb.load(truth)
    user = np.asarray(img.dataobj) > 0
    user[:, :, : user.shape[2] // 2] = False  # only the top half: clearly not the default
    path = root / "my_mask.nii.gz"
    nb.Nifti1Image(user.astype(np.uint8), img.affine).to_filename(path)
    out = root / "out_usermask"
    code = main([str(bids), str(out), "participant", "--mask-file", str(path),
                 "-w", str(root / "work_usermask"), "--no-registration"])  # fmt: skip
    assert code == 0
    written = np.asarray(nb.load(out / ANAT / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(written, user)
    chi = np.asarray(nb.load(out / ANAT / "sub-01_Chimap.nii.gz").dataobj)
    assert (chi[~user] == 0).all()
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    assert side["Stages"]["mask"]["Algorithm"] == "user_mask"
    assert side["Stages"]["mask"]["Parameters"]["mask_file"] == str(path.resolve())


def test_written_field_maps_match_the_true_fields_in_hz(e2e):
    """The total and local field derivatives are in Hz on the input grid: compare them with
    the simulator's true fields (NRMSE in the brain eroded by 3 voxels, both demeaned)."""
    from qsm_bids.core.metrics import evaluation_mask, nrmse

    bids, out, _, _ = e2e
    truth = bids / "derivatives" / "qsm_bids-truth" / ANAT

    def load(path):
        return np.asarray(nb.load(path).dataobj, dtype=np.float32)

    brain = load(truth / "sub-01_desc-brain_mask.nii.gz") > 0
    local_mask = load(out / ANAT / "sub-01_desc-local_mask.nii.gz") > 0
    m = evaluation_mask(brain & local_mask, 3)
    total = nrmse(load(out / ANAT / "sub-01_desc-total_fieldmap.nii.gz"),
                  load(truth / "sub-01_desc-total_fieldmap.nii.gz"), m)  # fmt: skip
    local = nrmse(load(out / ANAT / "sub-01_desc-local_fieldmap.nii.gz"),
                  load(truth / "sub-01_desc-local_fieldmap.nii.gz"), m)  # fmt: skip
    print(f"total field NRMSE {total:.2f} %, local field NRMSE {local:.1f} %")
    # measured 2026-12-04 on the realistic phantom: total 1.37 %, local 35.1 % (the local
    # field consistent with the final map, after two feedback passes)
    assert total < 1.6
    assert local < 40.0


def test_regional_statistics_after_registration_match_the_truth(e2e):
    """The AAL3 atlas, registered into the (rotated, deformed) subject, gives deep-grey
    means within 0.03 ppm of the true regional means (both referenced to the local mask;
    measured 2026-12-04 on the realistic phantom: at most 0.0259 ppm, pallidum, all four
    underestimated)."""
    from qsm_bids.interfaces.registration import read_regionstats_tsv
    from qsm_bids.registration.atlas import AAL3_DEEP_GREY

    bids, out, _, _ = e2e
    rows = read_regionstats_tsv(out / ANAT / "sub-01_desc-aal3_regionstats.tsv")
    by_label = {int(r["label"]): r for r in rows}
    assert rows[0]["region"] == "whole_brain"
    truth_dir = bids / "derivatives" / "qsm_bids-truth" / ANAT
    chi_true = np.asarray(nb.load(truth_dir / "sub-01_Chimap.nii.gz").dataobj)
    labels = np.asarray(nb.load(truth_dir / "sub-01_dseg.nii.gz").dataobj).astype(int)
    local = np.asarray(nb.load(out / ANAT / "sub-01_desc-local_mask.nii.gz").dataobj) > 0
    chi_true = chi_true - chi_true[local].mean()  # the map is referenced to its mask mean
    names = {"caudate": 6, "putamen": 7, "pallidum": 8, "thalamus": 9}
    for region, true_label in names.items():
        parts = [by_label[k] for k in AAL3_DEEP_GREY[region] if by_label[k]["voxels"] > 0]
        n = sum(p["voxels"] for p in parts)
        est = sum(p["mean_ppm"] * p["voxels"] for p in parts) / n
        true = float(chi_true[(labels == true_label) & local].mean())
        assert abs(est - true) < 0.03, f"{region}: {est:+.4f} vs {true:+.4f} ppm"
    for name in ("space-MNI152NLin2009aSym_Chimap.nii.gz", "desc-aal3_dseg.nii.gz"):
        assert (out / ANAT / f"sub-01_{name}").is_file()
    assert (out / "sub-01.html").is_file()


def test_group_level_joins_three_participants(tmp_path):
    # the ideal phantom: the test is about joining the participants' tables, not accuracy
    bids = simulate_dataset(
        tmp_path / "bids", subjects=3, resolution_mm=4.0, seed=21, phantom="ideal"
    )
    out = tmp_path / "out"
    args = [str(bids), str(out)]
    assert main([*args, "participant", "-w", str(tmp_path / "w"), "--pipeline", "fast"]) == 0
    assert main([*args, "group"]) == 0
    lines = (out / "group" / "regionstats.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, ln.split("\t"), strict=True)) for ln in lines[1:]]
    per_region: dict[str, set[str]] = {}
    for r in rows:
        per_region.setdefault(r["region"], set()).add(r["participant_id"])
    assert per_region["Putamen_L"] == {"sub-01", "sub-02", "sub-03"}
    assert all(len(v) == 3 for v in per_region.values())
    assert (out / "group" / "regionstats_summary.tsv").is_file()
