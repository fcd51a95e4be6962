"""BIDS input and derivative output of qsm_bids.

* :mod:`~qsm_bids.bids.layout`: find multi-echo GRE runs and their metadata (pybids);
* :mod:`~qsm_bids.bids.load`: load a run's phase (in rad) and magnitude as arrays;
* :mod:`~qsm_bids.bids.derivatives`: name and atomically write derivatives.
"""

from qsm_bids.bids.derivatives import (
    derivative_path,
    sidecar_for,
    sidecar_path,
    write_dataset_description,
    write_json_atomic,
    write_nifti_atomic,
)
from qsm_bids.bids.layout import Run, find_runs, validate_output_dir
from qsm_bids.bids.load import RunData, load_run

__all__ = [
    "Run",
    "RunData",
    "derivative_path",
    "find_runs",
    "load_run",
    "sidecar_for",
    "sidecar_path",
    "validate_output_dir",
    "write_dataset_description",
    "write_json_atomic",
    "write_nifti_atomic",
]
