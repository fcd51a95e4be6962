"""The command line: help texts, exit codes and clear errors before any output is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qsm_bids.cli.main import main


def _tiny_bids(root: Path) -> Path:
    import nibabel as nb
    import numpy as np

    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"})
    )
    rng = np.random.default_rng(0)
    for echo, te in ((1, 0.005), (2, 0.010)):
        for part in ("mag", "phase"):
            data = rng.uniform(-np.pi, np.pi, (8, 9, 7)).astype(np.float32)
            if part == "mag":
                data = np.abs(data) + 1
            stem = anat / f"sub-01_echo-{echo}_part-{part}_MEGRE"
            nb.Nifti1Image(data, np.eye(4)).to_filename(f"{stem}.nii.gz")
            Path(f"{stem}.json").write_text(
                json.dumps({"EchoTime": te, "MagneticFieldStrength": 3})
            )
    return root


def test_help_lists_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "qsm_bids.cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for option in ("--participant-label", "--session-label", "--work-dir", "--nprocs",
                   "--mem-gb", "--pipeline", "--mask-file", "simulate", "demo",
                   "--bids-filter-file", "--skip-bids-validation", "--stop-on-first-crash",
                   "--reports-only", "--boilerplate-only", "--config-file", "--omp-nthreads",
                   "--random-seed", "--mem", "--force-regionstats"):  # fmt: skip
        assert option in out.stdout


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--seed" in capsys.readouterr().out


def test_unknown_participant_is_a_clear_error(tmp_path, capsys):
    bids = _tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "99",
                 "--skip-bids-validation"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "99" in err and "01" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_unknown_pipeline_fails_before_writing(tmp_path, capsys):
    bids = _tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", "nope"])
    assert code == 2
    assert "unknown pipeline 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_output_inside_the_raw_dataset_is_refused(tmp_path, capsys):
    bids = _tiny_bids(tmp_path / "bids")
    assert main([str(bids), str(bids), "participant"]) == 2
    assert str(bids) in capsys.readouterr().err


def test_a_failing_run_is_summarised_in_one_line_with_exit_code_1(tmp_path, capsys):
    import nibabel as nb
    import numpy as np

    bids = _tiny_bids(tmp_path / "bids")
    ref = nb.load(bids / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.nii.gz")
    region = np.zeros(ref.shape, np.uint8)  # empty: cannot reference to it
    nb.Nifti1Image(region, ref.affine).to_filename(tmp_path / "ref.nii.gz")
    recipe = Path(__file__).resolve().parents[1] / "workflows" / "fast.toml"
    text = recipe.read_text().replace(
        '[reference]\nalgorithm = "mean"', '[reference]\nalgorithm = "mask"'
    )
    (tmp_path / "r.toml").write_text(text)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", str(tmp_path / "r.toml"),
                 "--reference-mask", str(tmp_path / "ref.nii.gz"),
                 "-w", str(tmp_path / "work"), "--no-registration",
                 "--skip-bids-validation"])  # fmt: skip
    assert code == 1
    failed = [ln for ln in capsys.readouterr().err.splitlines() if "FAILED sub-01:" in ln]
    assert failed and "does not overlap" in failed[0] and "crash-" in failed[0]
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()


def test_a_participant_with_a_corrupt_file_is_skipped_and_the_others_run(tmp_path, capsys):
    bids = _tiny_bids(tmp_path / "bids")
    sub2 = bids / "sub-02" / "anat"
    sub2.mkdir(parents=True)
    for f in (bids / "sub-01" / "anat").iterdir():
        (sub2 / f.name.replace("sub-01", "sub-02")).write_bytes(f.read_bytes())
    bad = sub2 / "sub-02_echo-2_part-phase_MEGRE.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", "fast",
                 "-w", str(tmp_path / "work"), "--no-registration",
                 "--skip-bids-validation"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "SKIPPED sub-02" in err and str(bad) in err
    assert "Traceback" not in err
    assert not (out / "sub-02").exists()
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()


def test_a_mask_on_another_grid_is_refused_before_running(tmp_path, capsys):
    import nibabel as nb
    import numpy as np

    bids = _tiny_bids(tmp_path / "bids")
    wrong = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)).to_filename(wrong)
    out = tmp_path / "out"
    for option in ("--mask-file", "--reference-mask"):
        code = main([str(bids), str(out), "participant", option, str(wrong),
                     "--skip-bids-validation"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2
        assert str(wrong) in err and "differs from the data" in err
        assert not out.exists()


def test_bad_simulator_options_are_a_clear_error(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "sim"), "--subjects", "0"]) == 2
    err = capsys.readouterr().err
    assert "subjects" in err and "Traceback" not in err
