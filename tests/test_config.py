"""The one config from the command line: TOML round trip, --config-file with command-line
overrides, --mem with units, --bids-filter-file, --random-seed, --boilerplate-only and the
BIDS validator call. Nothing here runs the pipeline."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest

from qsm_bids.bids.layout import find_runs
from qsm_bids.cli.main import main
from qsm_bids.cli.parser import config_from_args, parse_participant_args
from qsm_bids.config import Config
from qsm_bids.errors import QSMInputError

from .test_cli import _tiny_bids


def _config(*options: str, bids: str = "bids", out: str = "out") -> Config:
    return config_from_args(parse_participant_args([bids, out, "participant", *options]))


def test_config_round_trips_through_toml(tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"megre": {"acquisition": "wb", "run": [1, 2]}}))
    config = _config("--pipeline", "fast", "--participant-label", "sub-01", "02",
                     "--phase-sign", "-1", "--no-registration", "--nprocs", "3",
                     "--omp-nthreads", "2", "--mem", "12GB", "--random-seed", "7",
                     "--stop-on-first-crash", "--force-regionstats",
                     "--bids-filter-file", str(filters), "-w", str(tmp_path / "w"))  # fmt: skip
    assert config.execution.participant_label == ("01", "02")
    assert config.execution.bids_filters == {"megre": {"acquisition": "wb", "run": [1, 2]}}
    assert config.nipype.mem_mb == 12 * 1024 and config.nipype.omp_nthreads == 2
    assert config.workflow.registration is False and config.workflow.phase_sign == "-1"
    assert config.execution.bids_dir == Path("bids").resolve()  # absolute: rerun from anywhere
    assert len(config.execution.run_stamp) == len("20260101-120000_1a2b3c4d")
    path = config.write(tmp_path / "logs")
    assert path.name == f"config-{config.execution.run_stamp}.toml"
    again = Config.from_toml(path)
    assert again.with_updates("execution", config_file=None) == config


def test_command_line_options_override_the_config_file(tmp_path):
    written = _config("--pipeline", "fast", "--phase-sign", "-1", "--nprocs", "3",
                      "--no-registration", bids=str(tmp_path / "old"))  # fmt: skip
    path = written.write(tmp_path)
    config = _config("--config-file", str(path), "--nprocs", "5", bids=str(tmp_path / "new"))
    assert config.nipype.nprocs == 5  # typed: overrides the file
    assert config.workflow.pipeline == "fast"  # not typed: the file's value, not the default
    assert config.workflow.phase_sign == "-1"
    assert config.workflow.registration is False
    assert config.execution.bids_dir == tmp_path / "new"  # the positional arguments win
    assert config.execution.config_file == path
    assert config.execution.run_stamp  # a new stamp for the new run
    # an option typed with its default value still overrides the file
    assert _config("--config-file", str(path), "--phase-sign", "auto").workflow.phase_sign == "auto"


def test_a_bad_config_file_is_an_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[execution]\nbids_dir = 'x'\noutput_dir = 'y'\nnot_an_option = 1\n")
    code = main([str(tmp_path), str(tmp_path / "out"), "participant", "--config-file", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "not_an_option" in err


@pytest.mark.parametrize(
    ("text", "mb"), [("16GB", 16384), ("16000MB", 16000), ("16000", 16000), ("0.5T", 524288)]
)
def test_mem_takes_units_and_a_bare_number_is_mb(text, mb):
    assert _config("--mem", text).nipype.mem_mb == mb


def test_mem_gb_is_a_number_of_gb():
    assert _config("--mem-gb", "1.5").nipype.mem_mb == 1536


@pytest.mark.parametrize("options", [["--mem", "16"], ["--mem", "lots"],
                                     ["--mem", "8GB", "--mem-gb", "8"]])  # fmt: skip
def test_implausible_or_conflicting_memory_exits_2(options, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), str(tmp_path / "out"), "participant", *options])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--mem" in err
    assert not (tmp_path / "out").exists()


def _two_acquisitions(root: Path) -> Path:
    """The tiny dataset with its run copied as acq-a and acq-b, and a T1w per acquisition."""
    import nibabel as nb
    import numpy as np

    bids = _tiny_bids(root)
    anat = bids / "sub-01" / "anat"
    for f in sorted(anat.iterdir()):
        for acq in ("a", "b"):
            (anat / f.name.replace("sub-01_", f"sub-01_acq-{acq}_")).write_bytes(f.read_bytes())
        f.unlink()
    for acq in ("a", "b"):
        nb.Nifti1Image(np.ones((8, 9, 7), np.float32), np.eye(4)).to_filename(
            anat / f"sub-01_acq-{acq}_T1w.nii.gz"
        )
    return bids


def test_bids_filters_select_runs_and_the_t1w(tmp_path):
    from qsm_bids.bids.layout import find_runs

    bids = _two_acquisitions(tmp_path / "bids")
    assert [r.name for r in find_runs(bids)] == ["sub-01_acq-a", "sub-01_acq-b"]
    runs = find_runs(bids, bids_filters={"megre": {"acquisition": "b"}})
    assert [r.name for r in runs] == ["sub-01_acq-b"]
    runs = find_runs(bids, bids_filters={"t1w": {"acquisition": "b"}})
    assert [r.t1w.name for r in runs] == ["sub-01_acq-b_T1w.nii.gz"] * 2
    runs = find_runs(bids, bids_filters={"megre": {"acquisition": "*"}, "t2starw": {}})
    assert len(runs) == 2
    with pytest.raises(QSMInputError, match="matching the BIDS filters"):
        find_runs(bids, bids_filters={"megre": {"acquisition": None}})  # null: without acq


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"bold": {"task": "rest"}}', "unknown BIDS filter query 'bold'"),
        ('{"megre": {"acqusition": "b"}}', "unknown entity 'acqusition'"),
        ('{"megre": {"acquisition": {"x": 1}}}', "is not a label"),
    ],
)
def test_a_bad_bids_filter_file_exits_2_naming_it(content, problem, tmp_path, capsys):
    bids = _tiny_bids(tmp_path / "bids")
    path = tmp_path / "filters.json"
    path.write_text(content)
    code = main([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and problem in err
    assert not (tmp_path / "out").exists()


def test_random_seed_seeds_numpy_and_ants(monkeypatch):
    import numpy as np

    from qsm_bids.cli.participant import seed_random

    monkeypatch.delenv("ANTS_RANDOM_SEED", raising=False)
    seed_random(42)
    first = np.random.random()  # noqa: NPY002 (the global generator is what is seeded)
    assert os.environ["ANTS_RANDOM_SEED"] == "42"
    seed_random(42)
    assert np.random.random() == first  # noqa: NPY002


def test_boilerplate_only_writes_the_methods_text_without_running(tmp_path):
    bids = _tiny_bids(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(bids), str(out), "participant", "--boilerplate-only", "-w", str(work),
                 "--pipeline", "fast"])  # fmt: skip
    assert not work.exists() and not (out / "sub-01").exists()
    try:
        import qsm_bids.report.boilerplate  # noqa: F401
    except ImportError:
        pytest.skip("qsm_bids.report.boilerplate (the methods text) is not merged yet")
    assert code == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert "doi" in text.lower()
    assert (out / "logs" / "CITATION.bib").read_text().count("@") >= 2


def test_validator_findings_are_warnings_and_never_block(tmp_path, monkeypatch):
    """The validator is called on the input before anything else; its errors are logged
    naming the file and the app's own checks decide (here: an unknown participant)."""
    from qsm_bids.cli import participant

    calls = []
    issue = types.SimpleNamespace(
        code="SIDECAR_KEY_RECOMMENDED",
        location="/sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json",
        message="Units is recommended",
    )

    def validate_dataset(path):
        calls.append(path)
        return types.SimpleNamespace(errors=[issue], warnings=[], summary_lines=lambda: [])

    module = types.ModuleType("qsm_bids.bids.validate")
    module.validate_dataset = validate_dataset
    monkeypatch.setitem(sys.modules, "qsm_bids.bids.validate", module)
    bids = _tiny_bids(tmp_path / "bids")
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("qsm_bids").addHandler(handler)
    try:
        participant.validate_input(bids)
    finally:
        logging.getLogger("qsm_bids").removeHandler(handler)
    assert calls == [bids]
    assert any("sub-01_echo-1_part-phase_MEGRE.json" in r and "SIDECAR" in r for r in records)
    assert any("runs anyway" in r for r in records)
    # through the command line: called first, then the app's own check stops the run
    code = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "9"])
    assert code == 2 and calls == [bids, bids.resolve()]
    main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "9",
          "--skip-bids-validation"])  # fmt: skip
    assert len(calls) == 2


def test_a_modified_recipe_reaches_the_workflow_builder(tmp_path):
    """init_participant_wf(..., recipe=...) with a recipe changed in memory: the nodes get
    exactly that recipe's parameters, not those of the file the config names."""
    from dataclasses import replace

    from qsm_bids.pipeline.base import init_participant_wf
    from qsm_bids.recipe import load_recipe
    from qsm_bids.simulate.dataset import simulate_dataset

    bids = simulate_dataset(tmp_path / "bids", subjects=1, resolution_mm=6.0, phantom="ideal")
    recipe = load_recipe("fast")
    inversion = replace(recipe["inversion"], params={**recipe["inversion"].params,
                                                     "threshold": 0.123})  # fmt: skip
    modified = replace(recipe, stages={**recipe.stages, "inversion": inversion})
    config = _config("--pipeline", "fast", "-w", str(tmp_path / "w"))
    config = config.with_updates("execution", bids_dir=bids, output_dir=tmp_path / "out")
    runs = find_runs(bids)
    for chosen, expected in ((modified, 0.123), (None, recipe["inversion"].params["threshold"])):
        wf = init_participant_wf(runs, config, recipe=chosen)
        params = [
            n.inputs.params for n in wf._get_all_nodes()
            if n.name == "invert" and "threshold" in (n.inputs.params or {})
        ]  # fmt: skip
        assert params and all(p["threshold"] == expected for p in params)
