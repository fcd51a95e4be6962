"""The cluster paths on a real single-node SLURM (scripts/slurm_localhost.sh): the nipype
SLURM plugin gives the same maps as MultiProc, and the documented array-job script
processes one participant per task. Skipped where SLURM is not installed or not root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.cli.main import main
from qsm_bids.simulate.dataset import simulate_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),
    pytest.mark.skipif(
        shutil.which("slurmctld") is None or shutil.which("sbatch") is None,
        reason="SLURM not installed (apt-get install slurm-wlm munge)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM daemons need root"),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "scripts" / "slurm_localhost.sh"
    subprocess.run([str(script), "start", str(state)], check=True, capture_output=True)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run([str(script), "stop", str(state)], check=False)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_data")
    return simulate_dataset(root / "bids", subjects=2, resolution_mm=4.0, seed=7, phantom="ideal")


def _chimap(out: Path, sub: str) -> np.ndarray:
    path = out / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz"
    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_batch_plugin_matches_multiproc(slurm, dataset, tmp_path, plugin):
    common = [
        "--participant-label",
        "01",
        "--nprocs",
        "1",
        "--no-registration",
        "--pipeline",
        "fast",
    ]
    ref = tmp_path / "multiproc"
    assert main([str(dataset), str(ref), "participant", "-w", str(tmp_path / "w1"), *common]) == 0
    out = tmp_path / plugin
    code = main([str(dataset), str(out), "participant", "-w", str(tmp_path / "w2"), *common,
                 "--plugin", plugin, "--plugin-args", '{"sbatch_args": "--time=10"}'])  # fmt: skip
    assert code == 0
    np.testing.assert_array_equal(_chimap(out, "01"), _chimap(ref, "01"))
    # every batch job asked for memory and cores from the data size
    scripts = list((tmp_path / "w2").rglob("batch/*.sh")) + list((tmp_path / "w2").rglob("*.sh"))
    assert scripts, "no batch scripts were written"


def test_array_job_script_runs_one_participant_per_task(slurm, dataset, tmp_path):
    out = tmp_path / "derivatives"
    env = {
        **os.environ,
        "BIDS_DIR": str(dataset),
        "OUTPUT_DIR": str(out),
        "QSM_BIDS_ARGS": "--pipeline fast --no-registration",
        "WORK_ROOT": str(tmp_path / "scratch"),
        "QSM_BIDS": str(Path(sys.executable).parent / "qsm-bids"),
    }
    script = ROOT / "scripts" / "hpc" / "qsm_bids_array.sbatch"
    done = subprocess.run(
        ["sbatch", "--wait", "--array=1-2", "--cpus-per-task=1", "--mem=3G",
         f"--output={tmp_path}/task_%a.log", str(script)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("task_*.log")))
    assert done.returncode == 0, done.stderr + logs
    for sub in ("01", "02"):
        assert np.isfinite(_chimap(out, sub)).all()
    assert (out / "dataset_description.json").is_file()


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_a_job_that_cannot_start_is_reported_not_awaited(slurm, dataset, tmp_path, plugin):
    """A held job (as a partition or account limit leaves it) never starts: the run must
    cancel it and fail with the reason instead of waiting forever."""
    out = tmp_path / "out"
    start = time.monotonic()
    code = main([str(dataset), str(out), "participant", "-w", str(tmp_path / "w"),
                 "--participant-label", "01", "--nprocs", "1", "--no-registration",
                 "--pipeline", "fast", "--skip-bids-validation", "--plugin", plugin,
                 "--plugin-args", '{"sbatch_args": "--hold"}'])  # fmt: skip
    assert code == 1
    assert time.monotonic() - start < 300
    summary = json.loads(sorted((out / "logs").glob("summary-*.json"))[-1].read_text())
    run = summary["Runs"]["sub-01"]
    assert run["Status"] == "failed"
    assert "JobHeldUser" in run["Reason"] and "cannot start" in run["Reason"]
    user = os.environ.get("USER") or "root"
    left = subprocess.run(["squeue", "-h", "-u", user, "-o", "%i"], capture_output=True,
                          text=True, check=False).stdout.split()  # fmt: skip
    assert not left, f"jobs left in the queue: {left}"


def test_a_job_the_scheduler_kills_fails_its_run_with_the_job_state(slurm, dataset, tmp_path):
    """scancel of a running job (as a time limit or the OOM policy does): its node fails with
    the job's final state; nipype's own path would end the run with a TypeError."""
    import threading

    user = os.environ.get("USER") or "root"

    def cancel_first_running() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-u", user, "-t", "RUNNING", "-o", "%i"],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if out.stdout.split():
                subprocess.run(["scancel", out.stdout.split()[0]], check=False)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=cancel_first_running, daemon=True)
    killer.start()
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "-w", str(tmp_path / "w"),
                 "--participant-label", "01", "--nprocs", "1", "--no-registration",
                 "--pipeline", "fast", "--skip-bids-validation", "--plugin", "SLURM"])  # fmt: skip
    killer.join(timeout=5)
    assert code == 1
    summary = json.loads(sorted((out / "logs").glob("summary-*.json"))[-1].read_text())
    reason = summary["Runs"]["sub-01"]["Reason"]
    assert "BatchJobError" in reason and "CANCELLED" in reason, reason
