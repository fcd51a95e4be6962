"""End to end on harder inputs: an oblique 7 T slab with dcm2niix-style integer phase, and
phase-only data (no magnitude)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsm_bids.cli.main import main
from qsm_bids.evaluate import DEEP_GREY, evaluate_against_truth
from qsm_bids.simulate.dataset import simulate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e_variants")]

ANAT = Path("sub-01") / "anat"
#: NRMSE bound (%) of the default on the realistic phantom at 2 mm, 7 T, 15 degrees oblique,
#: integer phase (seed 2). Measured 2026-12-04: 61.1 % (the same with radians; axial 7 T
#: 54.6, oblique 3 T 48.0, axial 3 T 46.9, all seed 2): harder than the axial 3 T case of
#: tests/test_e2e.py (48.3), mostly in the local field (56 % against 36-40). The old default
#: (workflows/medi.toml) 78.0 % on the same data.
OBLIQUE_NRMSE_BOUND = 70.0
#: ... and on its deep-grey region errors: measured at most 0.0277 ppm (pallidum)
OBLIQUE_REGION_BOUND_PPM = 0.032


def _run_and_evaluate(bids: Path, root: Path):
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"), "--no-registration"])
    assert code == 0
    ev = evaluate_against_truth(
        out / ANAT / "sub-01_Chimap.nii.gz",
        bids / "derivatives" / "qsm_bids-truth",
        "01",
        mask=out / ANAT / "sub-01_desc-local_mask.nii.gz",
    )
    print(f"NRMSE {ev.nrmse_percent:.1f} %\n{ev.table()}")
    return out, ev


def test_oblique_7t_integer_phase_stays_accurate(tmp_path):
    """B0 is 15 degrees off the slab normal (only the affine says so) and the phase is
    stored as integers -4096..4095, on the realistic phantom: the map stays accurate
    (bounds measured on this case, OBLIQUE_NRMSE_BOUND)."""
    bids = simulate_dataset(
        tmp_path / "bids",
        field_strength_t=7.0,
        oblique_deg=15.0,
        phase_format="integer",
        seed=2,
        phantom="realistic",
    )
    out, ev = _run_and_evaluate(bids, tmp_path)
    assert ev.nrmse_percent < OBLIQUE_NRMSE_BOUND  # reached 61.1 (the default)
    errors = ev.region_errors()
    for region in DEEP_GREY:
        assert abs(errors[region]) < OBLIQUE_REGION_BOUND_PPM, f"{region}: {errors[region]:+.4f}"
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    assert abs(side["B0Direction"][2]) == pytest.approx(0.9659, abs=1e-3)  # cos 15 deg
    assert "integer phase" in " ".join(side["ProcessingNotes"])


def test_phase_only_data_runs_degraded_and_says_so(tmp_path):
    # the ideal phantom: the test is about the phase-quality mask and the notes of the
    # degraded run, its bound only that it stays usable
    bids = simulate_dataset(tmp_path / "bids", seed=3, phantom="ideal")
    for mag in (bids / ANAT).glob("*part-mag*"):
        mag.unlink()
    out, ev = _run_and_evaluate(bids, tmp_path)
    assert ev.nrmse_percent < 55.0  # reached 45.7 (nltv default, 2026-12-04; MEDI 46.6)
    side = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())
    assert side["Stages"]["mask"]["Algorithm"] == "phase_quality"
    assert any("magnitude" in n for n in side["ProcessingNotes"])
    assert not (out / ANAT / "sub-01_R2starmap.nii.gz").exists()


def test_demo_command_reports_accuracy(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--resolution", "3"]) == 0
    out = capsys.readouterr().out
    assert "NRMSE against the phantom's truth" in out
    for region in DEEP_GREY:
        assert region in out
    chimap = tmp_path / "demo" / "derivatives" / "qsm_bids" / ANAT / "sub-01_Chimap.nii.gz"
    assert chimap.is_file()


def _negate_phase(bids: Path) -> None:
    import nibabel as nb
    import numpy as np

    for path in (bids / ANAT).glob("*part-phase*.nii.gz"):
        img = nb.load(path)
        data = -np.asarray(img.dataobj, dtype=np.float32)
        nb.Nifti1Image(data, img.affine, img.header).to_filename(path)


def test_reversed_phase_sign_is_detected_and_corrected(tmp_path):
    """A scanner with the opposite phase convention: 'auto' (the default) negates the
    outputs and says so; '--phase-sign -1' reads the phase negated and finds it consistent.
    On the realistic phantom (veins, microstructure, SNR 40): what the check sees on a brain.
    Measured 2026-12-04 (3 mm, seed 4): tail asymmetry -0.97 (6 voxels above +0.08 ppm,
    421 below; strong tails -0.99), NRMSE 63.4 % after the negation and 63.4 % with
    '--phase-sign -1'; the ideal phantom gave -1.00 (0 and 326 voxels), 54.8 and 55.1 %."""
    bids = simulate_dataset(tmp_path / "bids", resolution_mm=3.0, seed=4, phantom="realistic")
    _negate_phase(bids)
    out, ev = _run_and_evaluate(bids, tmp_path)
    assert ev.nrmse_percent < 73.0  # reached 63.4; a negated map would be about 200 %
    check = json.loads((out / ANAT / "sub-01_Chimap.json").read_text())["PhaseSignCheck"]
    assert check["Negated"] is True and check["Decision"] == "reversed"
    assert check["Evidence"]["TailAsymmetry"] <= -check["Evidence"]["Margin"]
    fixed = tmp_path / "fixed"
    code = main([str(bids), str(fixed), "participant", "-w", str(tmp_path / "w2"),
                 "--no-registration", "--phase-sign", "-1"])  # fmt: skip
    assert code == 0
    check = json.loads((fixed / ANAT / "sub-01_Chimap.json").read_text())["PhaseSignCheck"]
    assert check["Negated"] is False and check["Decision"] == "consistent"
    assert check["Evidence"]["TailAsymmetry"] >= check["Evidence"]["Margin"]
    ev2 = evaluate_against_truth(
        fixed / ANAT / "sub-01_Chimap.nii.gz", bids / "derivatives" / "qsm_bids-truth", "01"
    )
    assert ev2.nrmse_percent < 73.0  # reached 63.4 (no mask given: the truth's brain)


def test_alternative_stage_choices_end_to_end(tmp_path):
    """Quality-thresholded mask, nonlinear complex echo fit, noise-weighted PDF and TV,
    CSF referencing: runs through the CLI, stays accurate, and the evaluate command
    scores it. TV with a fixed weight, as the data-weight tests of test_cli_invert.py: this
    test is about the stages, not the automatic weight (measured 2026-12-04 on this
    dataset: NRMSE 50.1 %, XSIM 0.69, correlation 0.87 at 5e-5; 64.3 %, 0.41, 0.79 with
    the automatic weight, 0.00052 ppm, with or without data weights)."""
    recipe = tmp_path / "alt.toml"
    recipe.write_text(
        '[pipeline]\nname = "alt"\n[mask]\nalgorithm = "magnitude_and_quality"\n'
        '[unwrap]\nalgorithm = "region_growing"\n[combine]\nalgorithm = "nonlinear_fit"\n'
        '[background]\nalgorithm = "pdf"\ndata_weights = true\n'
        '[inversion]\nalgorithm = "tv_admm"\nlambda_ = 5e-5\ndata_weights = true\n'
        '[reference]\nalgorithm = "csf"\n[r2star]\nalgorithm = "arlo"\n'
    )
    # the ideal phantom: the test is about the alternative stages running through the CLI
    # and the evaluate command, not about the default's accuracy
    bids = simulate_dataset(tmp_path / "bids", resolution_mm=3.0, seed=5, phantom="ideal")
    out = tmp_path / "out"
    args = [
        str(bids),
        str(out),
        "participant",
        "-w",
        str(tmp_path / "w"),
        "--no-registration",
        "--pipeline",
    ]
    assert main([*args, str(recipe)]) == 0
    chimap = out / ANAT / "sub-01_Chimap.nii.gz"
    side = json.loads(chimap.with_suffix("").with_suffix(".json").read_text())
    assert side["Stages"]["combine"]["Algorithm"] == "nonlinear_fit"
    assert side["Stages"]["reference"]["Algorithm"] == "csf"
    report = tmp_path / "eval.json"
    code = main(["evaluate", str(chimap), str(bids / "derivatives" / "qsm_bids-truth"),
                 "--mask", str(out / ANAT / "sub-01_desc-local_mask.nii.gz"),
                 "--output", str(report)])  # fmt: skip
    assert code == 0
    metrics = json.loads(report.read_text())
    assert metrics["nrmse_percent"] < 55.0
    assert metrics["xsim"] > 0.6 and metrics["correlation"] > 0.8
