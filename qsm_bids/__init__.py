"""qsm_bids: Quantitative Susceptibility Mapping from multi-echo GRE, as a BIDS app."""

import os
from importlib.metadata import PackageNotFoundError, version

# nipype checks online for a newer version once per process unless told not to; qsm_bids
# never touches the network.
os.environ.setdefault("NIPYPE_NO_ET", "1")

try:
    __version__ = version("qsm_bids")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
