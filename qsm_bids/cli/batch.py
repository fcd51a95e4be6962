"""Batch jobs that never start, or end without results, are reported instead of awaited.

nipype's SLURM plugin polls ``squeue`` for each node's job. A job the scheduler kills
(time limit, out of memory, ``scancel``) leaves the queue without a result file; nipype
notices after ``job_finished_timeout`` but then fails on its own crash report (its message
is a string where a list is expected), which ends the whole run with a ``TypeError``.
:class:`GuardedSLURMPlugin` reports the node as crashed, with the job's final state from
``scontrol``. A job that can never start
(held, a partition or node limit it exceeds, an invalid account or QOS: the pending
reasons in :data:`NEVER_STARTS`) would be waited on forever; here it is cancelled and
its node reported as crashed, with the reason, at the first poll that sees it. A job
pending longer than ``job_start_timeout`` seconds (plugin argument, default 0: no limit,
since a busy queue is normal) is treated the same way.

For ``SLURMGraph`` (every job submitted at once), :func:`check_tagged_jobs` does the same
while the participant level waits for the tagged jobs.

:class:`GuardedSGEPlugin` and :class:`GuardedPBSPlugin` do the same for SGE (error and
held states) and PBS (held jobs); they are tested against stand-in ``qsub``/``qstat``/``qdel``
scripts, not a real scheduler (none was available).
"""

from __future__ import annotations

import logging
import subprocess
import time

from nipype.pipeline.plugins.pbs import PBSPlugin
from nipype.pipeline.plugins.sge import SGEPlugin
from nipype.pipeline.plugins.slurm import SLURMPlugin

log = logging.getLogger("qsm_bids")

#: SLURM pending reasons of a job that will not start without someone acting
NEVER_STARTS = (
    "JobHeldUser",
    "JobHeldAdmin",
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "PartitionDown",
    "PartitionInactive",
    "ReqNodeNotAvail",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",
    "QOSMaxMemoryPerJob",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
    "DependencyNeverSatisfied",
    "launch failed requeued held",
)


def _run(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def job_state(jobid: int | str) -> tuple[str, str] | None:
    """``(state, reason)`` of a queued or running SLURM job (``squeue``), or None when it
    is no longer in the queue (or ``squeue`` does not answer)."""
    text = _run(["squeue", "-h", "-j", str(jobid), "-o", "%T|%r"])
    if not text or not text.strip():
        return None
    state, _, reason = text.strip().splitlines()[0].partition("|")
    return state.strip(), reason.strip()


def final_state(jobid: int | str) -> str | None:
    """How a finished job ended (``JobState`` and ``Reason`` from ``scontrol show job``,
    e.g. ``"OUT_OF_MEMORY"``, ``"TIMEOUT"``, ``"CANCELLED"``), while SLURM still knows it."""
    text = _run(["scontrol", "-o", "show", "job", str(jobid)])
    if not text:
        return None
    fields = dict(
        item.split("=", 1) for item in text.split() if "=" in item and not item.startswith("=")
    )
    state = fields.get("JobState")
    reason = fields.get("Reason")
    if state is None:
        return None
    return state if reason in (None, "None") else f"{state} ({reason})"


def never_starts(reason: str) -> bool:
    """Whether a pending reason means the job will not start by itself."""
    return any(key.lower() in reason.lower() for key in NEVER_STARTS)


def cancel(jobid: int | str) -> None:
    """``scancel`` a job (errors ignored: it may have just ended)."""
    _run(["scancel", str(jobid)])


class BatchGuard:
    """What the guarded batch plugins share (a mixin before nipype's plugin class): a job
    that :meth:`_stuck_reason` says cannot start, or that waited longer than
    ``job_start_timeout``, is cancelled and its node reported as crashed; a job that ended
    without results is reported with how it ended (:meth:`_final_state`) instead of
    crashing nipype's crash writer. Subclasses define the three scheduler hooks."""

    scheduler = "batch"

    def __init__(self, **kwargs) -> None:
        args = dict(kwargs.get("plugin_args") or {})
        self._start_timeout = float(args.pop("job_start_timeout", 0) or 0)
        kwargs["plugin_args"] = args
        super().__init__(**kwargs)
        self._pending_since: dict[int, float] = {}
        self._abandoned: dict[int, str] = {}

    # ------------------------------------------------------------------ scheduler hooks
    def _queued(self, taskid: int) -> tuple[bool, str | None]:
        """``(still in the queue, why it cannot start or None)``."""
        raise NotImplementedError

    def _cancel(self, taskid: int) -> None:
        raise NotImplementedError

    def _final_state(self, taskid: int) -> str | None:
        return None

    # ------------------------------------------------------------------ nipype's hooks
    def _is_pending(self, taskid: int) -> bool:
        if taskid in self._abandoned:
            return False
        queued, stuck = self._queued(taskid)
        if not queued:
            return False
        since = self._pending_since.setdefault(taskid, time.monotonic())
        waited = time.monotonic() - since
        if stuck is not None:
            why = f"it cannot start ({stuck})"
        elif self._start_timeout and waited > self._start_timeout and self._waiting(taskid):
            why = f"it was still waiting to start after {waited:.0f} s (job_start_timeout)"
        else:
            return True
        self._cancel(taskid)
        self._abandoned[taskid] = f"{self.scheduler} job {taskid} was cancelled: {why}"
        log.error("%s", self._abandoned[taskid])
        return False

    def _waiting(self, taskid: int) -> bool:
        """Whether the job has not started yet (for ``job_start_timeout``)."""
        return True

    def _get_result(self, taskid: int):
        if taskid not in self._abandoned and self._is_pending(taskid):
            return None
        if taskid in self._abandoned:
            text = f"BatchJobError: {self._abandoned.pop(taskid)}\n"
            return {"result": None, "traceback": [text], "taskid": taskid}
        result = super()._get_result(taskid)
        trace = result.get("traceback") if isinstance(result, dict) else None
        if isinstance(trace, str):
            # nipype's "finished, but no results file" comes as one string, which its own
            # crash writer cannot extend (TypeError): a list, with how the job ended
            state = self._final_state(taskid)
            ended = f"as {state}" if state else "(its final state is not known)"
            result["traceback"] = [
                trace,
                f"BatchJobError: {self.scheduler} job {taskid} ended {ended} without results\n",
            ]
        return result

    def _clear_task(self, taskid: int) -> None:
        self._pending.pop(taskid, None)


class GuardedSLURMPlugin(BatchGuard, SLURMPlugin):
    """nipype's SLURM plugin with :class:`BatchGuard`: ``squeue`` states and pending
    reasons (:data:`NEVER_STARTS`), ``scancel``, the final state from ``scontrol``. Extra
    plugin argument: ``job_start_timeout`` (s, 0 = none)."""

    scheduler = "SLURM"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._status: dict[int, str] = {}  # the latest squeue state of each job

    def _queued(self, taskid: int) -> tuple[bool, str | None]:
        state = job_state(taskid)
        if state is None:
            return False, None
        status, reason = state
        self._status[taskid] = status
        if status == "PENDING" and never_starts(reason):
            return True, f"pending reason: {reason}"
        return True, None

    def _waiting(self, taskid: int) -> bool:
        return self._status.get(taskid) == "PENDING"

    def _cancel(self, taskid: int) -> None:
        cancel(taskid)

    def _final_state(self, taskid: int) -> str | None:
        return final_state(taskid)


class GuardedSGEPlugin(BatchGuard, SGEPlugin):
    """nipype's SGE plugin with :class:`BatchGuard`: nipype decides whether the job is
    queued; a job in an error (``Eqw``) or held (``hqw``) state in ``qstat`` cannot start;
    ``qdel`` cancels it."""

    scheduler = "SGE"

    def _queued(self, taskid: int) -> tuple[bool, str | None]:
        if not SGEPlugin._is_pending(self, taskid):
            return False, None
        text = _run(["qstat"]) or ""
        for line in text.splitlines():
            cols = line.split()
            if len(cols) > 4 and cols[0] == str(taskid):
                state = cols[4]
                if "E" in state:
                    return True, f"qstat state {state}: an error keeps it from running"
                if "h" in state:
                    return True, f"qstat state {state}: held"
        return True, None

    def _cancel(self, taskid: int) -> None:
        _run(["qdel", str(taskid)])


class GuardedPBSPlugin(BatchGuard, PBSPlugin):
    """nipype's PBS plugin with :class:`BatchGuard`: nipype decides whether the job is
    queued; ``job_state = H`` (held) in ``qstat -f`` cannot start; ``qdel`` cancels it;
    the final state is the ``exit_status`` of ``qstat -fx`` where the server keeps it."""

    scheduler = "PBS"

    def _queued(self, taskid: int) -> tuple[bool, str | None]:
        if not PBSPlugin._is_pending(self, taskid):
            return False, None
        text = _run(["qstat", "-f", str(taskid)]) or ""
        if "job_state = H" in text:
            return True, "job_state = H: held"
        return True, None

    def _cancel(self, taskid: int) -> None:
        _run(["qdel", str(taskid)])

    def _final_state(self, taskid: int) -> str | None:
        text = _run(["qstat", "-fx", str(taskid)]) or ""
        for line in text.splitlines():
            key, _, value = line.strip().partition(" = ")
            if key == "exit_status":
                return f"exit status {value}"
        return None


#: guarded plugin per nipype plugin name
GUARDED = {"SLURM": GuardedSLURMPlugin, "SGE": GuardedSGEPlugin, "PBS": GuardedPBSPlugin}


def check_tagged_jobs(tag: str, user: str) -> str | None:
    """For ``SLURMGraph``: if a job tagged ``tag`` (its comment) can never start, cancel
    every job of the tag and return why; else None."""
    text = _run(["squeue", "-h", "-u", user, "-o", "%k|%i|%T|%r"]) or ""
    jobs = [line.split("|") for line in text.splitlines() if line.count("|") == 3]
    ours = [(jobid, state, reason) for comment, jobid, state, reason in jobs if comment == tag]
    stuck = [
        (jobid, reason)
        for jobid, state, reason in ours
        if state == "PENDING" and never_starts(reason)
    ]
    if not stuck:
        return None
    for jobid, _, _ in ours:
        cancel(jobid)
    first, reason = stuck[0]
    return (
        f"SLURM job {first} (and {len(ours) - 1} more of this run, cancelled) cannot start: "
        f"pending reason {reason}"
    )
