"""Shared plumbing of the nipype interfaces: reading and writing intermediate volumes.

Intermediate files live in the nipype work directory as uncompressed NIfTI (``.nii``), which
is several times faster to write and read than ``.nii.gz``; only the final derivatives are
compressed. Run metadata (echo times, field strength, B0 direction, provenance notes) flows
between nodes as a small JSON file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, traits

from qsm_bids import __version__, registry
from qsm_bids.core.linalg import one_blas_thread


def read_volume(path: str | os.PathLike, dtype: type = np.float32) -> np.ndarray:
    """Voxel data of a NIfTI file as ``dtype``."""
    return np.asarray(nb.load(str(path)).dataobj, dtype=dtype)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A NIfTI mask as a bool array (non-zero is inside)."""
    return np.asarray(nb.load(str(path)).dataobj) > 0


def write_like(
    data: np.ndarray, reference: str | os.PathLike, name: str, cwd: str | os.PathLike
) -> str:
    """Write ``data`` with the affine and header geometry of ``reference`` into ``cwd``."""
    ref = nb.load(str(reference))
    if data.dtype == bool:
        data = data.astype(np.uint8)
    hdr = ref.header.copy()
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    img = nb.Nifti1Image(data, ref.affine, hdr)
    img.set_qform(ref.affine, int(ref.header["qform_code"]) or 1)
    img.set_sform(ref.affine, int(ref.header["sform_code"]) or 1)
    out = Path(cwd) / f"{name}.nii"
    img.to_filename(str(out))
    return str(out)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Run metadata written by :class:`qsm_bids.interfaces.load.LoadRun`."""
    return json.loads(Path(path).read_text())


class StageInputSpec(BaseInterfaceInputSpec):
    """Inputs every stage interface has: the algorithm, its parameters, thread count."""

    algorithm = traits.Str(mandatory=True, desc="algorithm name from the registry")
    params = traits.Dict(desc="algorithm parameters (already validated by the recipe)")
    meta = File(exists=True, mandatory=True, desc="run metadata JSON")
    num_threads = traits.Int(
        1, usedefault=True, nohash=True, desc="threads for FFTs (results do not depend on it)"
    )
    software_version = traits.Str(
        __version__,
        usedefault=True,
        desc="qsm_bids version; part of the inputs' hash, so an upgrade recomputes cached stages",
    )


class StageInterface(SimpleInterface):
    """Base class: calls the registered core function of ``self.stage``."""

    stage: str = ""

    def resolved_params(self) -> dict[str, Any]:
        """The recipe's parameters with the algorithm's defaults, validated (pipeline-level
        ones included)."""
        return registry.resolve(self.stage, self.inputs.algorithm, dict(self.inputs.params))

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the chosen algorithm with the recipe's parameters and ``kwargs``.

        FFTs and numba kernels get ``num_threads`` threads, BLAS one
        (:func:`qsm_bids.core.linalg.one_blas_thread`).
        """
        os.environ["QSM_BIDS_NUM_THREADS"] = str(max(1, self.inputs.num_threads))
        func = registry.get_function(self.stage, self.inputs.algorithm)
        params = self.resolved_params()
        with one_blas_thread():
            return func(*args, **kwargs, **registry.function_kwargs(params))

    def call_offering(self, *args: Any, **offered: Any) -> Any:
        """Call the chosen algorithm with ``args`` and the ``offered`` inputs it names
        (:func:`qsm_bids.registry.call_offering`), threads as :meth:`call`."""
        os.environ["QSM_BIDS_NUM_THREADS"] = str(max(1, self.inputs.num_threads))
        params = self.resolved_params()
        with one_blas_thread():
            return registry.call_offering(
                self.stage, self.inputs.algorithm, params, *args, **offered
            )
