"""Faults of a real participant-level run, as a cluster produces them: a worker SIGKILLed
(the kernel's OOM killer), SIGTERM to the main process (SLURM's time limit), the output
disk filling up mid-run. Each must end the run by itself, promptly, with a non-zero exit
code, a summary that names the run and the cause, no Chimap for that run and no partial
file; the same command must then resume to the uninterrupted run's map."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.cli.execution import TASKS_FOLDER
from qsm_bids.simulate.dataset import simulate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]
QSM_BIDS = [sys.executable, "-m", "qsm_bids.cli"]
ENV = {**os.environ, "QSM_BIDS_NUM_THREADS": "1", "NIPYPE_NO_ET": "1"}
#: the issue's bound on the time from the fault to the exit
EXIT_WITHIN_S = 90


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    return simulate_dataset(
        tmp_path_factory.mktemp("faults") / "bids", subjects=1, resolution_mm=4.0, seed=3,
        phantom="ideal",
    )  # fmt: skip


def _command(bids: Path, out: Path, work: Path) -> list[str]:
    return [*QSM_BIDS, str(bids), str(out), "participant", "--no-registration",
            "-w", str(work), "--nprocs", "2", "--skip-bids-validation"]  # fmt: skip


@pytest.fixture(scope="module")
def reference(bids, tmp_path_factory) -> np.ndarray:
    root = tmp_path_factory.mktemp("faults_ref")
    subprocess.run(_command(bids, root / "out", root / "w"), check=True, env=ENV,
                   capture_output=True)  # fmt: skip
    return _chimap(root / "out")


def _chimap(out: Path) -> np.ndarray:
    return np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").dataobj)


def _worker_running(work: Path, needle: str, proc: subprocess.Popen, timeout: float = 120):
    """The pid of the worker whose task record names a node containing ``needle``."""
    tasks = work / TASKS_FOLDER
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for entry in tasks.glob("*") if tasks.is_dir() else []:
            try:
                if needle in entry.read_text():
                    return int(entry.name)
            except (OSError, ValueError):
                continue
        time.sleep(0.01)
    raise AssertionError(f"no worker ran {needle!r} (exit code {proc.poll()})")


def _summary(out: Path) -> dict:
    paths = sorted((out / "logs").glob("summary-*.json"))
    assert paths, "no summary written"
    return json.loads(paths[-1].read_text())


def _no_partial_files(out: Path) -> None:
    partial = [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]
    assert not partial, partial


def _resume_matches(bids, out, work, reference) -> None:
    done = subprocess.run(_command(bids, out, work), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(_chimap(out), reference, atol=1e-5)
    assert _summary(out)["Runs"]["sub-01"]["Status"] == "succeeded"


def test_a_killed_worker_ends_the_run_and_the_rerun_resumes(bids, reference, tmp_path):
    out, work = tmp_path / "out", tmp_path / "w"
    proc = subprocess.Popen(_command(bids, out, work), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid = _worker_running(work, "invert", proc)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=EXIT_WITHIN_S + 30)
    assert time.monotonic() - killed < EXIT_WITHIN_S
    assert proc.returncode == 1, err[-2000:]
    assert "FAILED sub-01" in err and "SIGKILL" in err
    run = _summary(out)["Runs"]["sub-01"]
    assert run["Status"] == "failed" and "SIGKILL" in run["Reason"] and "invert" in run["Reason"]
    assert any(str(pid) in text for text in _summary(out)["WorkerDeaths"])
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
    _no_partial_files(out)
    _resume_matches(bids, out, work, reference)


def test_sigterm_stops_the_run_and_the_rerun_resumes(bids, reference, tmp_path):
    out, work = tmp_path / "out", tmp_path / "w"
    proc = subprocess.Popen(_command(bids, out, work), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    worker = _worker_running(work, "background", proc)
    proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` does
    sent = time.monotonic()
    _, err = proc.communicate(timeout=EXIT_WITHIN_S + 30)
    assert time.monotonic() - sent < 30
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    summary = _summary(out)
    assert summary["Signal"] == "SIGTERM"
    assert summary["Runs"]["sub-01"]["Status"] == "failed"
    assert "SIGTERM" in summary["Runs"]["sub-01"]["Reason"]
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
    assert not Path(f"/proc/{worker}").exists() or "zombie" in _state(worker)
    _no_partial_files(out)
    _resume_matches(bids, out, work, reference)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MB tmpfs (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` completely with one file."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        block = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    while shutil.disk_usage(folder).free > 0:  # the last partial block
        try:
            with open(filler, "ab") as fh:
                fh.write(b"\0" * 4096)
        except OSError:
            break
    return filler


def test_a_full_output_disk_fails_the_run_cleanly_and_the_rerun_resumes(
    bids, reference, tmp_path, small_disk
):
    out, work = small_disk / "out", tmp_path / "w"
    proc = subprocess.Popen(_command(bids, out, work), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _worker_running(work, "combine", proc)
    filler = _fill(small_disk)
    filled = time.monotonic()
    _, err = proc.communicate(timeout=EXIT_WITHIN_S + 30)
    assert time.monotonic() - filled < EXIT_WITHIN_S
    assert proc.returncode == 1, err[-2000:]
    assert "FAILED sub-01" in err
    assert "No space left on device" in err and str(out) in err and "MB free" in err
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
    _no_partial_files(out)
    filler.unlink()
    _resume_matches(bids, out, work, reference)
