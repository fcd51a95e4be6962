"""Runtime behaviour of the participant level: quiet mode, the log file, the memory check,
no network, a SIGKILL in the middle and a rerun, two invocations at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.cli.main import main
from qsm_bids.simulate.dataset import simulate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cli_runtime")]
QSM_BIDS = [sys.executable, "-m", "qsm_bids.cli"]


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    return simulate_dataset(
        tmp_path_factory.mktemp("runtime") / "bids",
        subjects=2,
        resolution_mm=4.0,
        seed=11,
        phantom="ideal",
    )


def _chimap(out: Path, sub: str = "01") -> np.ndarray:
    path = out / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz"
    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def test_network_is_refused_in_tests():
    with pytest.raises(OSError, match="network access"):
        socket.create_connection(("192.0.2.1", 80), timeout=0.1)


def test_quiet_run_writes_a_log_file_and_bidsignore(bids, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "-q",
        "--no-registration",
        "--skip-bids-validation",
    ]
    assert main([*args, "-w", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err
    assert "done (" not in err  # no progress lines with -q
    logs = list((out / "logs").glob("qsm_bids_*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "[sub-01] invert done" in text and "command:" in text
    assert "logs" in (out / ".bidsignore").read_text().splitlines()


def test_too_little_memory_is_refused_before_anything_is_written(bids, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "01",
                 "-w", str(tmp_path / "w"), "--mem-gb", "0.05",
                 "--skip-bids-validation"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "part-phase_MEGRE.nii.gz" in err and "--mem-gb" in err
    assert not out.exists()


def _command(bids: Path, out: Path, work: Path, label: str) -> list[str]:
    return [*QSM_BIDS, str(bids), str(out), "participant", "--participant-label", label,
            "--no-registration", "-w", str(work), "--nprocs", "1",
            "--skip-bids-validation"]  # fmt: skip


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(bids, tmp_path):
    ref = tmp_path / "ref"
    env = {**os.environ, "QSM_BIDS_NUM_THREADS": "1"}
    subprocess.run(_command(bids, ref, tmp_path / "w_ref", "01"), check=True, env=env)

    out, work = tmp_path / "out", tmp_path / "w"
    proc = subprocess.Popen(
        _command(bids, out, work, "01"), env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # kill once the unwrapping has finished but before the inversion has
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(work.rglob("unwrap/result_unwrap.pklz")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
    # nothing half-written: no temporary files in the output tree
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and "tmp" in p.name]

    subprocess.run(_command(bids, out, work, "01"), check=True, env=env)
    np.testing.assert_allclose(_chimap(out), _chimap(ref), atol=1e-6)
    side = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert side["Units"] == "ppm"


def test_two_participants_at_once_into_one_output_folder(bids, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "QSM_BIDS_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(_command(bids, out, tmp_path / f"w{s}", s), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for s in ("01", "02")
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    for sub in ("01", "02"):
        assert np.isfinite(_chimap(out, sub)).all()
    assert len(list((out / "logs").glob("*.log"))) == 2


def test_no_disk_space_is_refused_before_anything_is_written(bids, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "01",
                 "-w", str(tmp_path / "w"), "--skip-bids-validation"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "GB free" in err
    assert not out.exists()


def test_unwritable_output_folder_is_refused(bids, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "01",
                 "-w", str(tmp_path / "w"), "--skip-bids-validation"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Read-only file system" in err
    assert not out.exists()
