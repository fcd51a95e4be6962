"""The workflow runner survives a dead worker and stops on SIGTERM (qsm_bids.cli.execution).

Real worker processes are killed: nipype's own MultiProc hangs forever in this situation
(the run this module exists for); here the run must end by itself, name the node and the
signal, and finish the independent work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from qsm_bids.cli.execution import TASKS_FOLDER, run_workflow

pytestmark = pytest.mark.xdist_group("execution")


def _sleep_and_write(seconds: float, out: str) -> str:
    import time
    from pathlib import Path

    time.sleep(seconds)
    Path(out).write_text("done")
    return out


def _workflow(tmp_path: Path, names: dict[str, float]) -> pe.Workflow:
    wf = pe.Workflow(name="wf", base_dir=str(tmp_path / "work"))
    for name, seconds in names.items():
        node = pe.Node(
            Function(["seconds", "out"], ["out"], _sleep_and_write),
            name=name,
        )
        node.inputs.seconds = seconds
        node.inputs.out = str(tmp_path / f"{name}.txt")
        wf.add_nodes([node])
    return wf


def _pid_running(tasks: Path, needle: str, timeout: float = 60.0) -> int:
    """The pid of the worker whose record names a node containing ``needle``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tasks.is_dir():
            for entry in tasks.iterdir():
                try:
                    if needle in entry.read_text():
                        return int(entry.name)
                except (OSError, ValueError):
                    continue
        time.sleep(0.02)
    raise AssertionError(f"no worker started {needle}")


def test_killed_worker_ends_the_node_not_the_run(tmp_path) -> None:
    wf = _workflow(tmp_path, {"victim": 30.0, "bystander": 4.0, "later": 1.0})
    tasks = tmp_path / "work" / TASKS_FOLDER
    killed: dict[str, int] = {}

    def killer() -> None:
        pid = _pid_running(tasks, "victim")
        time.sleep(0.5)
        killed["pid"] = pid
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    start = time.monotonic()
    outcome = run_workflow(
        wf, "MultiProc", {"n_procs": 2, "memory_gb": 1, "raise_insufficient": False}
    )
    elapsed = time.monotonic() - start
    thread.join(timeout=5)
    # ended by itself, well before the victim's 30 s sleep would have ended
    assert elapsed < 25, elapsed
    assert len(outcome.deaths) == 1
    death = outcome.deaths[0]
    assert "victim" in death.node
    assert death.pid == killed["pid"]
    assert death.exitcode == -signal.SIGKILL
    assert "SIGKILL" in death.describe()
    assert outcome.error is not None  # nipype reports the crashed node
    # the independent nodes finished (resubmitted when the pool broke under them)
    assert (tmp_path / "bystander.txt").read_text() == "done"
    assert (tmp_path / "later.txt").read_text() == "done"
    assert not (tmp_path / "victim.txt").exists()


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_execution import _workflow
    from qsm_bids.cli.execution import run_workflow
    wf = _workflow(Path({tmp!r}), {{"long1": 120.0, "long2": 120.0}})
    t = time.monotonic()
    outcome = run_workflow(wf, "MultiProc", {{"n_procs": 2, "memory_gb": 1}}, grace_s=5)
    print("signal", outcome.signal, "seconds", round(time.monotonic() - t, 1), flush=True)
    sys.exit(128 + outcome.signal if outcome.signal else 0)
    """
)


def test_sigterm_stops_the_workers_promptly(tmp_path) -> None:
    script = _SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, start_new_session=True,
    )  # fmt: skip
    tasks = tmp_path / "work" / TASKS_FOLDER
    workers = {_pid_running(tasks, "long1"), _pid_running(tasks, "long2")}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "signal 15" in out
    # the workers are gone too (nothing keeps running on the node after the job ends)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
