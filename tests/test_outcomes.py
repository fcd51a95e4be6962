"""Outcomes that never lie: the run hash, stale outputs of an earlier run, a failed rerun,
a regional table skipped on purpose, and --reports-only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qsm_bids.bids.layout import find_runs
from qsm_bids.bids.provenance import (
    outputs_match,
    regional_statistics_skipped,
    remove_stale_outputs,
    run_hash,
    run_outputs,
)
from qsm_bids.cli.main import main
from qsm_bids.cli.parser import config_from_args, parse_participant_args
from qsm_bids.recipe import load_recipe

from .test_cli import _tiny_bids


def _config(bids: Path, *options: str):
    return config_from_args(parse_participant_args([str(bids), "out", "participant", *options]))


@pytest.fixture
def tiny(tmp_path) -> Path:
    return _tiny_bids(tmp_path / "bids")


def test_run_hash_changes_with_what_changes_the_outputs(tiny):
    (run,) = find_runs(tiny)
    config = _config(tiny)
    base = run_hash(run, config, load_recipe("default"))
    assert len(base) == 64
    assert run_hash(run, _config(tiny), load_recipe("default")) == base  # a new stamp: same
    assert run_hash(run, config, load_recipe("fast")) != base
    assert run_hash(run, _config(tiny, "--phase-sign", "-1"), load_recipe("default")) != base
    assert run_hash(run, _config(tiny, "--no-registration"), load_recipe("default")) != base
    assert run_hash(run, config, load_recipe("default"), mask_file=run.phase_files[0]) != base
    assert run_hash(run, _config(tiny, "--nprocs", "2"), load_recipe("default")) == base
    # an input file rewritten (another modification time) gives another hash
    phase = run.phase_files[1]
    stat = phase.stat()
    os.utime(phase, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run_hash(run, config, load_recipe("default")) != base


def _write_outputs(output_dir: Path, prefix: str, run_hash_value: str | None) -> list[Path]:
    anat = output_dir / "sub-01" / "anat"
    figures = output_dir / "sub-01" / "figures"
    anat.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    side = {"Units": "ppm"} | ({"RunHash": run_hash_value} if run_hash_value else {})
    files = [
        anat / f"{prefix}_Chimap.nii.gz",
        anat / f"{prefix}_desc-local_mask.nii.gz",
        anat / f"{prefix}_space-MNI152NLin2009aSym_Chimap.nii.gz",
        figures / f"{prefix}_desc-chi_slices.png",
    ]
    for path in files:
        path.write_bytes(b"x")
    (anat / f"{prefix}_Chimap.json").write_text(json.dumps(side))
    return [*files, anat / f"{prefix}_Chimap.json"]


def test_outputs_of_another_run_hash_are_removed_and_others_kept(tiny, tmp_path):
    (run,) = find_runs(tiny)
    out = tmp_path / "out"
    mine = _write_outputs(out, "sub-01", "old")
    other = _write_outputs(out, "sub-01_acq-x", "old")  # another run of the participant
    assert sorted(run_outputs(out, run)) == sorted(mine)
    assert not outputs_match(out, run, "new")

    assert remove_stale_outputs(out, run, "old") == []  # same hash: a resumed run keeps them
    assert all(p.exists() for p in mine)
    assert outputs_match(out, run, "old")

    removed = remove_stale_outputs(out, run, "new")
    assert sorted(removed) == sorted(mine)
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in other)


def test_outputs_without_a_run_hash_are_stale(tiny, tmp_path):
    (run,) = find_runs(tiny)
    out = tmp_path / "out"
    mine = _write_outputs(out, "sub-01", None)  # written before run hashes existed
    assert sorted(remove_stale_outputs(out, run, "new")) == sorted(mine)


def test_a_regional_table_skipped_on_purpose_is_recognised(tiny, tmp_path):
    (run,) = find_runs(tiny)
    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    assert regional_statistics_skipped(out, run) is None
    xfm = anat / "sub-01_from-orig_to-MNI152NLin2009aSym_mode-image_xfm.json"
    xfm.write_text(json.dumps({"RegionalStatistics": "written"}))
    assert regional_statistics_skipped(out, run) is None
    xfm.write_text(json.dumps({"RegionalStatistics": "skipped: the field of view is a slab"}))
    assert "slab" in regional_statistics_skipped(out, run)


def test_a_skipped_regional_table_is_not_reported_missing(tiny, tmp_path):
    from qsm_bids.cli.participant import missing_tables

    (run,) = find_runs(tiny)
    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    assert missing_tables(out, run, True, {}) == ["registration/regional statistics"]
    assert missing_tables(out, run, False, {}) == []
    xfm = anat / "sub-01_from-orig_to-MNI152NLin2009aSym_mode-image_xfm.json"
    xfm.write_text(json.dumps({"RegionalStatistics": "skipped: template overlap 0.41 < 0.7"}))
    assert missing_tables(out, run, True, {}) == []


def _has_run_hashes() -> bool:
    """Whether the workflow builders record RunHash (branch 'pipeline')."""
    import inspect

    from qsm_bids.pipeline.base import init_participant_wf

    return "run_hashes" in inspect.signature(init_participant_wf).parameters


needs_run_hash = pytest.mark.skipif(
    not _has_run_hashes(), reason="the workflow builders do not record RunHash yet"
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A successful --pipeline fast run of the tiny dataset (copied by each test)."""
    root = tmp_path_factory.mktemp("outcomes")
    bids = _tiny_bids(root / "bids")
    out = root / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", "fast", "-w",
                 str(root / "work"), "--no-registration", "--skip-bids-validation"])  # fmt: skip
    assert code == 0
    return bids, out, root / "work"


@needs_run_hash
def test_a_run_writes_its_config_and_log_with_one_stamp_and_records_its_hash(finished):
    bids, out, _ = finished
    (config,) = (out / "logs").glob("config-*.toml")
    stamp = config.name.removeprefix("config-").removesuffix(".toml")
    assert (out / "logs" / f"qsm_bids_{stamp}.log").is_file()
    assert 'pipeline = "fast"' in config.read_text()
    side = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    from qsm_bids.config import Config

    (run,) = find_runs(bids)
    repeat = Config.from_toml(config)
    assert side["RunHash"] == run_hash(run, repeat, repeat.recipe)


@needs_run_hash
def test_a_failed_rerun_exits_1_and_leaves_no_older_map(finished, tmp_path, capsys):
    import nibabel as nb
    import numpy as np

    bids, done, work = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    chimap = out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    assert chimap.is_file()
    # the same run with a recipe that fails at run time: reference to an empty region
    ref = nb.load(bids / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.nii.gz")
    nb.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine).to_filename(tmp_path / "ref.nii.gz")
    text = (Path(__file__).resolve().parents[1] / "workflows" / "fast.toml").read_text()
    recipe = tmp_path / "crash.toml"
    recipe.write_text(
        text.replace('[reference]\nalgorithm = "mean"', '[reference]\nalgorithm = "mask"')
    )
    capsys.readouterr()
    code = main([str(bids), str(out), "participant", "--pipeline", str(recipe),
                 "--reference-mask", str(tmp_path / "ref.nii.gz"), "-w", str(tmp_path / "w"),
                 "--no-registration", "--skip-bids-validation"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED sub-01" in err and "0 of 1 run(s) succeeded" in err
    assert "removing" in err and "sub-01_Chimap.nii.gz" in err
    assert not chimap.exists()
    assert not list((out / "sub-01" / "anat").glob("sub-01_*"))


@needs_run_hash
def test_a_chimap_of_another_run_is_not_success(finished, tmp_path):
    """A Chimap on disk whose sidecar records another hash does not count (e.g. written
    by a concurrent run with other settings)."""
    bids, done, _ = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    (run,) = find_runs(bids)
    side = out / "sub-01" / "anat" / "sub-01_Chimap.json"
    recorded = json.loads(side.read_text())["RunHash"]
    assert outputs_match(out, run, recorded)
    assert not outputs_match(out, run, "0" * 64)


def test_reports_only_rewrites_the_report_without_running(tiny, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    _write_outputs(out, "sub-01", "x")
    code = main([str(tiny), str(out), "participant", "--reports-only", "-w", str(work)])
    assert code == 0
    assert (out / "sub-01.html").is_file()
    assert not work.exists()
    assert main([str(tiny), str(out), "participant", "--reports-only",
                 "--participant-label", "02"]) == 2  # fmt: skip
    assert "no outputs of participant(s) 02" in capsys.readouterr().err


@needs_run_hash
def test_a_modified_recipe_runs_and_its_config_repeats_it(tmp_path):
    from dataclasses import replace

    from qsm_bids.cli.participant import run_participant_level
    from qsm_bids.config import Config

    bids = _tiny_bids(tmp_path / "bids")
    recipe = load_recipe("fast")
    inversion = replace(recipe["inversion"], params={**recipe["inversion"].params,
                                                     "threshold": 0.123})  # fmt: skip
    modified = replace(recipe, stages={**recipe.stages, "inversion": inversion})
    out = tmp_path / "out"
    config = config_from_args(parse_participant_args([
        str(bids), str(out), "participant", "--pipeline", "fast", "--no-registration",
        "--skip-bids-validation", "-w", str(tmp_path / "w")]))  # fmt: skip
    result = run_participant_level(config, recipe=modified)
    assert [r.name for r in result.succeeded] == ["sub-01"]
    side = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert side["Stages"]["inversion"]["Parameters"]["threshold"] == 0.123
    (written,) = (out / "logs").glob("config-*.toml")
    assert Config.from_toml(written).recipe.provenance() == modified.provenance()


def test_a_phase_sidecar_without_units_runs_with_a_validator_warning(tmp_path, capsys):
    """dcm2niix writes phase sidecars without ``Units``: the validator calls it an error,
    the app runs and says so, naming the file."""
    validate = pytest.importorskip("qsm_bids.bids.validate")
    if validate.find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    bids = _tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", "fast", "--no-registration",
                 "-w", str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    warned = [ln for ln in err.splitlines() if "SIDECAR_KEY_REQUIRED" in ln]
    assert any("sub-01_echo-1_part-phase_MEGRE" in ln for ln in warned)
    assert "runs anyway" in err
    (log_file,) = (out / "logs").glob("qsm_bids_*.log")
    assert "BIDS validator warning" in log_file.read_text()  # every finding in the log


@needs_run_hash
def test_the_written_config_repeats_the_run(finished, tmp_path):
    import nibabel as nb
    import numpy as np

    bids, done, _ = finished
    (config,) = (done / "logs").glob("config-*.toml")
    out = tmp_path / "again"
    assert main([str(bids), str(out), "participant", "--config-file", str(config)]) == 0
    anat, first = out / "sub-01" / "anat", done / "sub-01" / "anat"
    side = json.loads((anat / "sub-01_Chimap.json").read_text())
    assert side["RunHash"] == json.loads((first / "sub-01_Chimap.json").read_text())["RunHash"]
    np.testing.assert_array_equal(
        nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata(),
        nb.load(first / "sub-01_Chimap.nii.gz").get_fdata(),
    )


@needs_run_hash
def test_reports_only_rewrites_a_deleted_report(finished, tmp_path):
    bids, done, _ = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    (out / "sub-01.html").unlink()
    logs = sorted((out / "logs").iterdir())
    code = main([str(bids), str(out), "participant", "--reports-only", "-w",
                 str(tmp_path / "w")])  # fmt: skip
    assert code == 0
    import re

    figures = re.findall(r'src="([^"]+\.(?:png|svg))"', (out / "sub-01.html").read_text())
    assert figures and all((out / f).is_file() for f in figures)  # drawn from the outputs
    assert sorted((out / "logs").iterdir()) == logs  # no run: no new config or log
    assert not (tmp_path / "w").exists()
