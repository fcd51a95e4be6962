"""qsm_bids: Quantitative Susceptibility Mapping from multi-echo GRE, as a BIDS app."""

import os
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version

# nipype checks online for a newer version once per process unless told not to; qsm_bids
# never touches the network.
os.environ.setdefault("NIPYPE_NO_ET", "1")


def _ensure_numba_cache_dir() -> None:
    """Give numba a writable cache folder (read-only installs, containers, shared /tmp).

    numba caches compiled functions next to their source when it can write there, else in
    ``NUMBA_CACHE_DIR``; with neither writable, importing a cached function fails. Must run
    before numba is imported.
    """
    current = os.environ.get("NUMBA_CACHE_DIR")
    if current:
        try:
            os.makedirs(current, exist_ok=True)
        except OSError:
            pass
        if os.access(current, os.W_OK):
            return
    elif os.access(os.path.join(os.path.dirname(__file__), "core", "unwrap"), os.W_OK):
        return
    uid = os.getuid() if hasattr(os, "getuid") else 0
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"qsm_bids-numba-{uid}")


_ensure_numba_cache_dir()

# numba's parallel kernels (qsm_bids.core.stencils, the TGV solver) run on its fork-safe
# "workqueue" threads: after a kernel has run on GNU OpenMP threads, a fork (nipype's
# MultiProc workers, a pipeline started from a Python session or a test) aborts the child.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
if "numba" in sys.modules and sys.modules["numba"].config.THREADING_LAYER == "default":
    sys.modules["numba"].config.THREADING_LAYER = "workqueue"  # numba was imported first

try:
    __version__ = version("qsm_bids")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
