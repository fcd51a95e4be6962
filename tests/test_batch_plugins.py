"""The guarded PBS plugin (qsm_bids.cli.batch) against stand-in ``qsub``/``qstat``/``qdel``
scripts: a held job is cancelled and reported instead of awaited forever, and a job that
ended without results fails its node with how it ended instead of crashing nipype's crash
writer (a TypeError that ended the whole run). The SLURM variant is tested on a real
local SLURM in tests/test_slurm.py."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from qsm_bids.cli.execution import run_workflow

QSUB = """#!/bin/sh
n=$(cat "{state}/next" 2>/dev/null || echo 100)
echo $((n + 1)) > "{state}/next"
echo "$n.fake-server"
"""
QSTAT = """#!/bin/sh
# qstat -f ID / qstat -fx ID: the job state the test chose, or "unknown" (finished)
mode=$(cat "{state}/mode")
case "$mode" in
  held) echo "Job Id: $2"; echo "    job_state = H" ;;
  queued) echo "Job Id: $2"; echo "    job_state = Q" ;;
  gone) if [ "$1" = "-fx" ]; then echo "Job Id: $2"; echo "    exit_status = 271";
        else echo "qstat: Unknown Job Id $2" >&2; exit 153; fi ;;
esac
"""
QDEL = """#!/bin/sh
echo "$1" >> "{state}/deleted"
echo gone > "{state}/mode"
"""


def _touch(out: str) -> str:
    from pathlib import Path

    Path(out).write_text("ran")
    return out


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "pbs"
    bindir = state / "bin"
    bindir.mkdir(parents=True)
    for name, text in (("qsub", QSUB), ("qstat", QSTAT), ("qdel", QDEL)):
        path = bindir / name
        path.write_text(text.format(state=state))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    # what plugin_settings() sets for nipype's batch plugins (they name jobs by it)
    monkeypatch.setenv("LOGNAME", os.environ.get("LOGNAME") or "qsmtest")
    return state


def _workflow(tmp_path: Path) -> pe.Workflow:
    wf = pe.Workflow(name="wf", base_dir=str(tmp_path / "work"))
    wf.config["execution"].update(
        {"crashdump_dir": str(tmp_path / "crash"), "crashfile_format": "txt",
         "job_finished_timeout": 1, "poll_sleep_duration": 0.1}
    )  # fmt: skip
    node = pe.Node(Function(["out"], ["out"], _touch), name="step")
    node.inputs.out = str(tmp_path / "step.txt")
    wf.add_nodes([node])
    return wf


def _crash_text(tmp_path: Path) -> str:
    files = sorted((tmp_path / "crash").glob("crash-*"))
    assert files, "no crash file"
    return "\n".join(p.read_text(errors="replace") for p in files)


def test_a_held_pbs_job_is_cancelled_and_reported(fake_pbs, tmp_path):
    (fake_pbs / "mode").write_text("held")
    start = time.monotonic()
    outcome = run_workflow(_workflow(tmp_path), "PBS", {"qsub_args": ""})
    assert time.monotonic() - start < 60
    assert outcome.error is not None
    assert (fake_pbs / "deleted").read_text().split() == ["100"]
    text = _crash_text(tmp_path)
    assert "BatchJobError: PBS job 100 was cancelled" in text and "held" in text


def test_a_pbs_job_gone_without_results_fails_its_node(fake_pbs, tmp_path):
    (fake_pbs / "mode").write_text("gone")
    outcome = run_workflow(_workflow(tmp_path), "PBS", {"qsub_args": ""})
    assert outcome.error is not None  # the run ended normally, with the node crashed
    text = _crash_text(tmp_path)
    assert "BatchJobError: PBS job 100 ended as exit status 271 without results" in text
    assert not (tmp_path / "step.txt").exists()


def test_a_job_waiting_past_job_start_timeout_is_cancelled(fake_pbs, tmp_path):
    (fake_pbs / "mode").write_text("queued")  # queued, never started: a busy queue
    start = time.monotonic()
    outcome = run_workflow(_workflow(tmp_path), "PBS", {"qsub_args": "", "job_start_timeout": 2})
    assert 2 <= time.monotonic() - start < 60
    assert outcome.error is not None
    assert (fake_pbs / "deleted").read_text().split() == ["100"]
    assert "job_start_timeout" in _crash_text(tmp_path)
