"""Running the nipype workflow so that a dead worker or a signal ends the run promptly.

nipype's MultiProc plugin hangs when one of its worker processes dies (the kernel's
out-of-memory killer, a ``kill -9``): the ``concurrent.futures`` pool breaks, the result
callback raises ``BrokenProcessPool`` inside the pool's thread, the task is never marked
finished and the scheduling loop waits for it forever (seen: still waiting after twelve
minutes). :class:`ResilientMultiProcPlugin` is nipype's MultiProc with three changes:

1. every task's worker writes ``<work>/.qsm_bids_tasks/<pid>`` (the node's full name), so
   the parent knows which node a dead process was running (also useful to an operator);
2. a future that fails without a result (the pool broke under it) is caught in the
   callback and turned, in the main thread, into either a crash of that node with the
   signal that killed its worker (``result["traceback"]``: nipype writes the crash file
   and skips the node's dependants) or, for a task whose own worker was not the one that
   died (the pool terminates every worker when one dies), a resubmission to a fresh pool
   (once per task);
3. a broken pool is replaced by a new one before the next submission, so the other runs'
   work goes on and finishes.

Our own plugin around nipype's was chosen over a watchdog thread (it would have to kill
the whole run, also the healthy participants) and over the Linear plugin (no parallelism).

:func:`run_workflow` also turns ``SIGTERM`` (SLURM's time limit, ``scancel``, a container
stop) into :class:`Terminated`: the workers are stopped within ``grace_s`` seconds, the
work folder stays resumable (finished nodes keep their results) and the caller writes the
summary and exits with ``128 + signal``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

log = logging.getLogger("qsm_bids")

#: folder (in the work directory) where each worker records the node it runs
TASKS_FOLDER = ".qsm_bids_tasks"


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """The process received ``SIGTERM`` (or another handled signal) while running."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal_name(signum))


def signal_name(signum: int) -> str:
    """``"SIGKILL"`` for 9, ``"signal 42"`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class WorkerDeath:
    """A worker process that died while running a node."""

    node: str
    pid: int
    exitcode: int | None

    def describe(self) -> str:
        """One line for the summary and the crash file."""
        if self.exitcode is not None and self.exitcode < 0:
            sig = signal_name(-self.exitcode)
            why = f"killed by {sig}"
            if -self.exitcode == signal.SIGKILL:
                why += " (e.g. the kernel's out-of-memory killer, or kill -9)"
        elif self.exitcode is not None:
            why = f"exited with code {self.exitcode}"
        else:
            why = "ended without a result"
        return f"the worker process {self.pid} running {self.node} was {why}"


def _worker_init(cwd: str) -> None:
    """Set up a worker: nipype's initializer, then the default ``SIGTERM`` action (die; the
    parent's handler raising :class:`Terminated` is inherited through ``fork``) and
    ``SIGINT`` ignored (Ctrl-C reaches the whole process group; the parent stops the
    workers itself)."""
    process_initializer(cwd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_node_recorded(node, updatehash: bool, taskid: int, tasks_dir: str) -> dict:
    """nipype's ``run_node`` in a worker, after recording this process's node."""
    record = Path(tasks_dir) / str(os.getpid())
    try:
        record.write_text(node.fullname)
    except OSError:  # a full disk must not hide the node's own error
        pass
    try:
        return run_node(node, updatehash, taskid)
    finally:
        record.unlink(missing_ok=True)


class ResilientMultiProcPlugin(MultiProcPlugin):
    """nipype's MultiProc that survives (and reports) a worker that dies; see the module
    docstring. ``plugin_args`` as MultiProc's, plus ``tasks_dir`` (default: a
    ``.qsm_bids_tasks`` folder in the current directory)."""

    def __init__(self, plugin_args: dict | None = None) -> None:
        args = dict(plugin_args or {})
        self._tasks_dir = Path(args.pop("tasks_dir", Path.cwd() / TASKS_FOLDER))
        self._tasks_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._tasks_dir.iterdir():  # records of an earlier, killed run
            stale.unlink(missing_ok=True)
        super().__init__(plugin_args=args)
        self.pool.shutdown(wait=False)  # nipype's pool, made with its own initializer
        self.pool = self._new_pool()
        self._lock = threading.Lock()
        self._future_task: dict[Future, int] = {}
        self._broken: dict[int, BaseException] = {}
        self._jobs: dict[int, tuple[Any, bool]] = {}
        self._resubmitted: set[int] = set()
        self._task_pid: dict[int, int] = {}
        self._processes: dict[int, Any] = {}
        self.deaths: list[WorkerDeath] = []

    # ------------------------------------------------------------------ the pool
    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        return ProcessPoolExecutor(
            max_workers=self.processors,
            initializer=_worker_init,
            initargs=(self._cwd,),
            mp_context=mp.get_context(self.plugin_args.get("mp_context")),
        )

    def _ensure_pool(self) -> None:
        if getattr(self.pool, "_broken", False):
            log.warning("a worker process died; starting a new pool of %d", self.processors)
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()

    def _remember_processes(self) -> None:
        procs = getattr(self.pool, "_processes", None) or {}
        self._processes.update(dict(procs))

    def _scan_records(self) -> None:
        """Map running tasks to worker pids from the records (called in the main thread)."""
        running = {name: tid for tid, (node, _) in self._jobs.items() for name in [node.fullname]}
        try:
            entries = list(self._tasks_dir.iterdir())
        except OSError:
            return
        for entry in entries:
            try:
                name = entry.read_text()
            except OSError:
                continue
            if name in running and entry.name.isdigit():
                self._task_pid[running[name]] = int(entry.name)

    # ------------------------------------------------------------------ nipype's hooks
    def _submit_job(self, node, updatehash: bool = False) -> int:
        self._taskid += 1
        taskid = self._taskid
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        self._jobs[taskid] = (node, updatehash)
        self._submit(taskid)
        return taskid

    def _submit(self, taskid: int) -> None:
        node, updatehash = self._jobs[taskid]
        self._ensure_pool()
        future = self.pool.submit(
            _run_node_recorded, node, updatehash, taskid, str(self._tasks_dir)
        )
        with self._lock:
            self._future_task[future] = taskid
        self._task_obj[taskid] = future
        future.add_done_callback(self._async_callback)
        self._remember_processes()

    def _async_callback(self, future: Future) -> None:
        with self._lock:
            taskid = self._future_task.pop(future, None)
        try:
            result = future.result()
        except BaseException as exc:  # BrokenProcessPool, CancelledError: no result
            if taskid is not None:
                with self._lock:
                    self._broken[taskid] = exc
            return
        self._taskresult[result["taskid"]] = result

    def _get_result(self, taskid: int):
        with self._lock:
            exc = self._broken.pop(taskid, None)
        if exc is None:
            return self._taskresult.get(taskid)
        return self._handle_broken(taskid, exc)

    def _clear_task(self, taskid: int) -> None:
        self._task_obj.pop(taskid, None)
        self._jobs.pop(taskid, None)

    def _handle_broken(self, taskid: int, exc: BaseException):
        """A task without a result: a crash of its node if its own worker died (or it
        failed twice), else resubmitted once."""
        node, _ = self._jobs[taskid]
        self._scan_records()
        pid = self._task_pid.get(taskid)
        proc = self._processes.get(pid) if pid is not None else None
        code = None
        if proc is not None:
            proc.join(timeout=5)
            code = proc.exitcode
        killed_by_others = code == -signal.SIGTERM and any(
            p.exitcode is not None and p.exitcode not in (0, -signal.SIGTERM)
            for p in self._processes.values()
        )
        victim = pid is not None and not killed_by_others and code not in (0, None)
        if not victim and taskid not in self._resubmitted and isinstance(exc, BrokenProcessPool):
            self._resubmitted.add(taskid)
            log.info("resubmitting %s (its pool broke under it)", node.fullname)
            self._submit(taskid)
            return None
        death = WorkerDeath(node=node.fullname, pid=pid or -1, exitcode=code)
        self.deaths.append(death)
        text = f"WorkerDiedError: {death.describe()} ({type(exc).__name__}: {exc})\n"
        log.error("%s", text.strip())
        return {"result": None, "traceback": [text], "taskid": taskid}

    # ------------------------------------------------------------------ stopping
    def abort(self, grace_s: float = 10.0) -> None:
        """Stop every worker: cancel what has not started, ``SIGTERM`` the running ones,
        ``SIGKILL`` what is left after ``grace_s`` seconds."""
        self._remember_processes()
        self.pool.shutdown(wait=False, cancel_futures=True)
        procs = [p for p in self._processes.values() if p.exitcode is None]
        for p in procs:
            try:
                p.terminate()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join(timeout=5)


@dataclass
class ExecutionOutcome:
    """How the workflow run ended (beside the per-node crash files)."""

    signal: int | None = None
    deaths: list[WorkerDeath] = field(default_factory=list)
    error: str | None = None

    @property
    def interrupted(self) -> bool:
        return self.signal is not None


@contextmanager
def signals_raise(signums: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, the given signals raise :class:`Terminated` in the main thread
    (the previous handlers are restored afterwards). Elsewhere than the main thread this
    does nothing (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_workflow(wf, plugin: str, plugin_args: dict, *, grace_s: float = 10.0) -> ExecutionOutcome:
    """Run ``wf`` with ``plugin``; MultiProc runs as :class:`ResilientMultiProcPlugin`,
    SLURM, SGE and PBS as the guarded plugins of :mod:`qsm_bids.cli.batch` (jobs that cannot
    start are cancelled and reported, jobs that end without results are named).

    Returns
    -------
    ExecutionOutcome
        ``signal`` set when ``SIGTERM`` or ``SIGINT`` ended the run (workers stopped within
        ``grace_s`` s); ``deaths`` lists the workers that died; ``error`` nipype's own
        summary when some node failed (its crash files say which).
    """
    outcome = ExecutionOutcome()
    runner: Any = plugin
    if plugin == "MultiProc":
        args = dict(plugin_args)
        args.setdefault("tasks_dir", str(Path(wf.base_dir or ".") / TASKS_FOLDER))
        runner = ResilientMultiProcPlugin(plugin_args=args)
    elif plugin in ("SLURM", "SGE", "PBS"):
        from qsm_bids.cli.batch import GUARDED

        runner = GUARDED[plugin](plugin_args=dict(plugin_args))
    try:
        with signals_raise((signal.SIGTERM,)):
            if isinstance(runner, str):
                wf.run(plugin=runner, plugin_args=plugin_args)
            else:
                wf.run(plugin=runner)
    except (Terminated, KeyboardInterrupt) as exc:
        outcome.signal = exc.signum if isinstance(exc, Terminated) else int(signal.SIGINT)
        if isinstance(runner, ResilientMultiProcPlugin):
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
            try:
                runner.abort(grace_s)
            finally:
                signal.signal(signal.SIGTERM, previous)
    except RuntimeError as exc:  # nipype: "Workflow did not execute cleanly"
        outcome.error = str(exc)
        log.debug("nipype reported: %s", exc)
    if isinstance(runner, ResilientMultiProcPlugin):
        outcome.deaths = list(runner.deaths)
    return outcome
