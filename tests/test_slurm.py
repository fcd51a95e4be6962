"""The cluster paths on a real single-node SLURM (scripts/slurm_localhost.sh): the nipype
SLURM plugin gives the same maps as MultiProc, and the documented array-job script
processes one participant per task. Skipped where SLURM is not installed or not root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
