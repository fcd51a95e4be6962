"""The official BIDS validator (bids-validator-deno) on the raw simulated data, on a phase
sidecar without ``Units``, and on the derivatives of runs with registration
(:mod:`qsm_bids.bids.validate`). The tests that run it skip where it is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsm_bids.bids import validate as val
from qsm_bids.bids.validate import Issue, ValidationResult, parse_report, validate_dataset
from qsm_bids.errors import QSMInputError
from qsm_bids.simulate.dataset import simulate_dataset

needs_validator = pytest.mark.skipif(
    val.find_validator() is None, reason="bids-validator-deno is not installed"
)
QSM_BIDS = [sys.executable, "-m", "qsm_bids.cli"]
#: what an older qsm_bids wrote into .bidsignore (its "dir/" patterns match nothing)
OLD_BIDSIGNORE = "logs/\ngroup/\nsub-*.html\nsub-*/figures/\n"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return simulate_dataset(
        tmp_path_factory.mktemp("validator") / "bids",
        subjects=1,
        resolution_mm=3.0,
        phantom="ideal",
        seed=4,
    )


def _codes(issues: list[Issue]) -> set[str]:
    return {i.code for i in issues}


# ------------------------------------------------------------------------ without binary
def test_parse_report_and_summary_lines():
    report = {
        "issues": {
            "issues": [
                {"code": "NOT_INCLUDED", "severity": "error", "location": f"/sub-01/a{i}.x"}
                for i in range(4)
            ]
            + [
                {
                    "code": "SIDECAR_KEY_REQUIRED",
                    "subCode": "Units",
                    "severity": "error",
                    "location": "/sub-01/anat/p.nii.gz",
                    "issueMessage": "Field description:\n Measurement units",
                },
                {"code": "README_FILE_MISSING", "severity": "warning", "location": "/"},
                {"code": "X", "severity": "ignore", "location": "/y"},
            ],
            "codeMessages": {"NOT_INCLUDED": "Files are not part of BIDS."},
        }
    }
    result = parse_report(report)
    assert len(result.errors) == 5 and len(result.warnings) == 1  # "ignore" left out
    units = result.errors[-1]
    assert units.code == "SIDECAR_KEY_REQUIRED Units"
    assert units.location == "/sub-01/anat/p.nii.gz"
    assert units.message == "Field description: Measurement units"
    assert result.errors[0].message == "Files are not part of BIDS."
    assert result.summary_lines() == [
        "error NOT_INCLUDED: 4 issues (/sub-01/a0.x, /sub-01/a1.x, /sub-01/a2.x, ...)",
        "error SIDECAR_KEY_REQUIRED Units: 1 issue (/sub-01/anat/p.nii.gz)",
        "warning README_FILE_MISSING: 1 issue (/)",
    ]
    assert ValidationResult().summary_lines() == []


def test_missing_or_crashing_validator_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(val, "find_validator", lambda: None)
    with pytest.raises(QSMInputError, match="not installed") as err:
        validate_dataset(tmp_path)
    assert err.value.path == tmp_path
    crash = [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
    monkeypatch.setattr(val, "find_validator", lambda: crash)
    with pytest.raises(QSMInputError, match=r"exit status 3: boom") as err:
        validate_dataset(tmp_path)
    assert err.value.path == tmp_path
    with pytest.raises(QSMInputError, match="not a folder"):
        validate_dataset(tmp_path / "missing")


@needs_validator
def test_validator_runs_without_network_access():
    """Deno runs the bundled validator with the network denied (no schema download, no
    fetching of annexed files) where the Python package is importable."""
    pytest.importorskip("bids_validator_deno")
    command = val.find_validator()
    assert command is not None and "--deny-net" in command and "--allow-net" not in command


# ----------------------------------------------------------------------------- raw data
@needs_validator
def test_raw_simulated_dataset_has_no_validator_error(raw):
    result = validate_dataset(raw)
    assert result.errors == [], result.summary_lines()
    # the simulator's gzip headers carry no file name; its recommended keys are there
    assert "GZIP_HEADER_FILENAME" not in _codes(result.warnings)
    assert "SIDECAR_KEY_RECOMMENDED ScanningSequence" not in _codes(result.warnings)
    assert "JSON_KEY_RECOMMENDED SourceDatasets" not in _codes(result.warnings)


@needs_validator
def test_phase_without_units_is_a_validator_error_but_loads(raw, tmp_path):
    """dcm2niix writes no ``Units`` for phase: the validator calls that an error (reported,
    with the file named) while qsm_bids reads the phase from its value range."""
    from qsm_bids.bids.layout import find_runs
    from qsm_bids.bids.load import load_run

    bids = tmp_path / "bids"
    shutil.copytree(raw, bids, ignore=shutil.ignore_patterns("derivatives"))
    phase_sidecars = sorted((bids / "sub-01" / "anat").glob("*_part-phase_MEGRE.json"))
    for side in phase_sidecars:
        meta = json.loads(side.read_text())
        del meta["Units"]
        side.write_text(json.dumps(meta))
    result = validate_dataset(bids)
    units = [i for i in result.errors if i.code == "SIDECAR_KEY_REQUIRED Units"]
    expected = {"/sub-01/anat/" + p.name.replace(".json", ".nii.gz") for p in phase_sidecars}
    assert {i.location for i in units} == expected
    assert any("Units" in line for line in result.summary_lines())
    # the app's own loading accepts the run and gets the same phase (in rad)
    run = find_runs(bids)[0]
    assert run.phase_units == ""
    data = load_run(run)
    reference = load_run(find_runs(raw)[0])
    np.testing.assert_allclose(data.phase, reference.phase, atol=1e-6)


@needs_validator
def test_real_crop_raw_data_has_no_validator_error(shared_dir):
    """A dataset the project does not contain (a real 7 T crop in ../shared)."""
    result = validate_dataset(shared_dir / "data" / "real-7t-crop")
    assert result.errors == [], result.summary_lines()


# ----------------------------------------------------------------------------- derivatives
def _check_sidecars(out: Path, bids: Path) -> int:
    """Every sidecar of the derivatives has a Description and BIDS-URI Sources that
    resolve; native maps carry no space- entity. Returns the number of sidecars."""
    sidecars = sorted(out.glob("sub-*/**/anat/*.json"))
    for side_path in sidecars:
        side = json.loads(side_path.read_text())
        name = side_path.name
        assert side.get("Description"), name
        assert side.get("Sources"), name
        for uri in side["Sources"]:
            if uri.startswith("bids:raw:"):
                assert (bids / uri.removeprefix("bids:raw:")).is_file(), (name, uri)
            else:
                assert uri.startswith("bids::"), (name, uri)
                assert (out / uri.removeprefix("bids::")).is_file(), (name, uri)
        assert "space-orig" not in name
    return len(sidecars)


def _participant(bids: Path, out: Path, work: Path) -> None:
    out.mkdir(parents=True)
    (out / ".bidsignore").write_text(OLD_BIDSIGNORE)  # left by an older version
    command = [*QSM_BIDS, str(bids), str(out), "participant", "--pipeline", "fast",
               "-w", str(work), "--nprocs", "1"]  # fmt: skip
    env = {**os.environ, "QSM_BIDS_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("validator")
@needs_validator
def test_demo_outputs_with_registration_have_no_validator_error(tmp_path):
    """``qsm-bids demo`` (simulated data, a run with registration): its raw data and its
    derivatives, into a folder where an older version left its ``.bidsignore``."""
    out = tmp_path / "demo"
    deriv = out / "derivatives" / "qsm_bids"
    deriv.mkdir(parents=True)
    (deriv / ".bidsignore").write_text(OLD_BIDSIGNORE)
    command = [*QSM_BIDS, "demo", str(out), "--resolution", "3", "--phantom", "ideal",
               "--pipeline", "fast", "--nprocs", "1"]  # fmt: skip
    env = {**os.environ, "QSM_BIDS_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw_result = validate_dataset(out / "bids")
    assert raw_result.errors == [], raw_result.summary_lines()

    anat = deriv / "sub-01" / "anat"
    assert (anat / "sub-01_desc-aal3_dseg.nii.gz").is_file()  # registration ran
    assert (anat / "sub-01_space-MNI152NLin2009aSym_Chimap.nii.gz").is_file()
    result = validate_dataset(deriv)
    assert result.errors == [], result.summary_lines()
    codes = _codes(result.warnings)
    assert "README_FILE_MISSING" not in codes and "NIFTI_PIXDIM" not in codes
    assert not any(c.startswith("SIDECAR_KEY_RECOMMENDED") for c in codes), codes
    assert _check_sidecars(deriv, out / "bids") >= 10
    assert "sub-*/figures/" not in (deriv / ".bidsignore").read_text().splitlines()
    # the warps have a positive step on every axis (ANTs writes 0 for the vector axes)
    import nibabel as nb

    warps = list(anat.glob("*_desc-warp_xfm.nii.gz"))
    assert len(warps) == 2
    for warp in warps:
        hdr = nb.load(warp).header
        assert (hdr["pixdim"][1 : hdr["dim"][0] + 1] > 0).all(), warp.name
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]
    assert description["License"] == "CC0" and description["HowToAcknowledge"]


@pytest.mark.slow
@pytest.mark.xdist_group("validator")
@needs_validator
def test_derivatives_of_the_real_crop_with_registration_have_no_validator_error(
    shared_dir, tmp_path
):
    """The derivatives of a run with registration on a dataset the project does not
    contain (the real 7 T crop of ../shared)."""
    bids = shared_dir / "data" / "real-7t-crop"
    out = tmp_path / "out"
    _participant(bids, out, tmp_path / "work")
    result = validate_dataset(out)
    assert result.errors == [], result.summary_lines()
    assert _check_sidecars(out, bids) >= 8
