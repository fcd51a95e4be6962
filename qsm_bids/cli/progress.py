"""Progress messages while nipype runs: which run and stage, how many done, elapsed time."""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("qsm_bids")


class Progress:
    """A nipype ``status_callback`` that logs each finished or failed stage of each run.

    Parameters
    ----------
    totals : dict
        Number of steps (nodes) per run workflow name (``qsm_sub_01...``), for ``k/n``.
    labels : dict
        The run's name (``sub-01_ses-A``) per run workflow name.
    """

    def __init__(self, totals: dict[str, int], labels: dict[str, str]) -> None:
        self.totals = totals
        self.labels = labels
        self.done: Counter[str] = Counter()
        self.start = time.monotonic()

    @staticmethod
    def _where(node) -> tuple[str, str]:
        parts = node.fullname.split(".")
        run = next((p for p in parts if p.startswith("qsm_sub")), parts[0])
        return run, node.name

    def __call__(self, node, status: str) -> None:
        run, stage = self._where(node)
        label = self.labels.get(run, run)
        elapsed = time.monotonic() - self.start
        if status == "start":
            log.debug("[%s] %s started (%.0f s)", label, stage, elapsed)
            return
        self.done[run] += 1
        total = self.totals.get(run, 0)
        if status == "end":
            log.info(
                "[%s] %s done (%d/%d steps, %.0f s elapsed)",
                label, stage, self.done[run], total, elapsed,
            )  # fmt: skip
        else:
            log.error("[%s] %s FAILED (%.0f s elapsed)", label, stage, elapsed)
