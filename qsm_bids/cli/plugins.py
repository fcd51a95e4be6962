"""nipype execution plugins: one machine (MultiProc, Linear) or a cluster's batch system
(SLURM, SGE, PBS, and their Graph variants that submit every job at once with
dependencies).

On a cluster each heavy node asks the scheduler for the memory and cores it was given
from the data size (``mem_gb``/``n_procs`` set by the workflow builders), so a 1 mm run and
a 2 mm run request what they need. ``--plugin-args`` adds site settings (partition,
account, time limit) for every job.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from qsm_bids.errors import QSMInputError

PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph")
#: batch plugins -> (the plugin_args key nipype reads per node, its submit command)
BATCH = {
    "SLURM": ("sbatch_args", "sbatch"),
    "SLURMGraph": ("sbatch_args", "sbatch"),
    "SGE": ("qsub_args", "qsub"),
    "SGEGraph": ("qsub_args", "qsub"),
    "PBS": ("qsub_args", "qsub"),
    "PBSGraph": ("qsub_args", "qsub"),
}


def check_plugin(plugin: str) -> None:
    """Raise :class:`QSMInputError` if ``plugin`` is unknown or its scheduler is missing."""
    if plugin not in PLUGINS:
        raise QSMInputError(None, f"unknown --plugin {plugin!r}; choose from {', '.join(PLUGINS)}")
    if plugin in BATCH and shutil.which(BATCH[plugin][1]) is None:
        raise QSMInputError(None, f"--plugin {plugin} needs '{BATCH[plugin][1]}' on PATH")


def load_plugin_args(value: str | None) -> dict[str, Any]:
    """``--plugin-args``: a JSON object, or a ``.json``/``.yaml``/``.yml`` file holding one."""
    if not value:
        return {}
    text, source = value, "--plugin-args"
    path = Path(value)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise QSMInputError(path, "--plugin-args file not found")
        text, source = path.read_text(), str(path)
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, ImportError) as exc:  # json and yaml errors derive from ValueError
        raise QSMInputError(source, f"not valid JSON/YAML: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        raise QSMInputError(source, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise QSMInputError(source, "plugin arguments must be a mapping (JSON object)")
    return data


def node_request(plugin: str, mem_gb: float, n_procs: int) -> str:
    """The scheduler options that request ``mem_gb`` GB and ``n_procs`` cores for one job."""
    mem_mb = max(256, int(round(mem_gb * 1024)))
    if plugin.startswith("SLURM"):
        return f"--mem={mem_mb}M --cpus-per-task={n_procs}"
    if plugin.startswith("SGE"):
        return f"-l h_vmem={mem_mb}M -pe smp {n_procs}"
    return f"-l mem={mem_mb}mb,ncpus={n_procs}"


def set_node_requests(wf, plugin: str) -> None:
    """Give every node of ``wf`` a per-job resource request for a batch ``plugin``."""
    if plugin not in BATCH:
        return
    key = BATCH[plugin][0]
    for node in wf._get_all_nodes():
        request = node_request(plugin, float(node.mem_gb), int(node.n_procs or 1))
        # leading space: the Graph plugins append it to the global arguments as they are
        node.plugin_args = {**(node.plugin_args or {}), key: " " + request}


def plugin_settings(
    plugin: str,
    user_args: dict[str, Any],
    *,
    cores: int,
    mem_gb: float,
    status_callback=None,
) -> tuple[dict[str, Any], str | None]:
    """``plugin_args`` for ``wf.run`` and, for the Graph plugins, a tag to wait on.

    Sets what nipype's batch plugins need: ``LOGNAME`` in the environment, and a
    non-empty ``plugin_args`` with a job comment that tags this invocation's jobs.
    """
    check_plugin(plugin)
    args = dict(user_args)
    if plugin == "MultiProc":
        args.setdefault("n_procs", cores)
        args.setdefault("memory_gb", mem_gb)
    if plugin in ("MultiProc", "Linear", "SLURM", "SGE", "PBS") and status_callback:
        args.setdefault("status_callback", status_callback)
    tag = None
    if plugin in BATCH:
        key = BATCH[plugin][0]
        os.environ.setdefault("LOGNAME", getpass.getuser())
        if plugin == "SLURMGraph":
            tag = f"qsm_bids_{uuid.uuid4().hex[:12]}"
            args[key] = f"{args.get(key, '')} --comment={tag}"
        args.setdefault(key, "")
        args.setdefault("dont_resubmit_completed_jobs", True)
    return args, tag


def wait_for_slurm_jobs(
    tag: str, *, poll_s: float = 1.0, timeout_s: float = 7 * 24 * 3600
) -> str | None:
    """Block until no SLURM job whose comment is ``tag`` is queued or running.

    The SLURMGraph plugin submits the whole graph and returns at once; the participant
    level waits here before it checks the outputs and reports success or failure. A job
    of the tag that can never start (held, beyond a partition's limits, ...:
    :func:`qsm_bids.cli.batch.check_tagged_jobs`) ends the wait: every job of the tag is
    cancelled and the reason returned. Returns None when the jobs ended by themselves.
    """
    from qsm_bids.cli.batch import check_tagged_jobs

    user = os.environ.get("USER") or getpass.getuser()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-u", user, "-o", "%k"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and tag not in out.stdout.split():
            return None
        stuck = check_tagged_jobs(tag, user)
        if stuck is not None:
            return stuck
        time.sleep(poll_s)
    raise TimeoutError(f"SLURM jobs tagged {tag} still queued after {timeout_s:.0f} s")
