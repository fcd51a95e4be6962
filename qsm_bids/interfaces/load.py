"""Loading one BIDS run into the work directory as 4D phase (rad) and magnitude volumes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from qsm_bids.bids.layout import Run
from qsm_bids.bids.load import load_run
from qsm_bids.core.phase import wrap_to_pi


def run_to_json(run: Run) -> str:
    """Serialise a :class:`~qsm_bids.bids.layout.Run` (for a nipype string input)."""
    d = asdict(run)
    for key in ("phase_files", "magnitude_files"):
        d[key] = [str(p) for p in d[key]]
    return json.dumps(d, sort_keys=True, default=str)


def run_from_json(text: str) -> Run:
    """Inverse of :func:`run_to_json`."""
    d: dict[str, Any] = json.loads(text)
    for key in ("phase_files", "magnitude_files"):
        d[key] = tuple(Path(p) for p in d[key])
    for key in ("echo_times", "warnings"):
        d[key] = tuple(d[key])
    return Run(**d)


class _LoadRunInputSpec(BaseInterfaceInputSpec):
    run_json = traits.Str(mandatory=True, desc="the run, as written by run_to_json")
    in_files = InputMultiObject(
        File(exists=True),
        desc="the run's echo files; listed so that a changed input invalidates the cache",
    )
    phase_sign = traits.Enum(1, -1, usedefault=True, desc="-1: negate the phase on reading")


class _LoadRunOutputSpec(TraitedSpec):
    phase = File(exists=True, desc="4D phase (rad, wrapped, [-pi, pi))")
    magnitude = File(desc="4D magnitude (arbitrary units); absent for phase-only data")
    meta = File(exists=True, desc="run metadata JSON")


class LoadRun(SimpleInterface):
    """Read a run's echoes, check them, rescale phase to radians, stack echoes as 4D."""

    input_spec = _LoadRunInputSpec
    output_spec = _LoadRunOutputSpec

    def _run_interface(self, runtime):
        run = run_from_json(self.inputs.run_json)
        data = load_run(run)
        cwd = Path(runtime.cwd)

        def save(arr: np.ndarray, name: str) -> str:
            img = nb.Nifti1Image(arr.astype(np.float32), data.affine)
            img.set_qform(data.affine, int(data.header["qform_code"]) or 1)
            img.set_sform(data.affine, int(data.header["sform_code"]) or 1)
            img.header.set_xyzt_units("mm", "sec")
            path = cwd / f"{name}.nii"
            img.to_filename(str(path))
            return str(path)

        notes = list(data.notes)
        phase = data.phase
        if self.inputs.phase_sign == -1:
            phase = wrap_to_pi(-phase)
            notes.append("phase negated on reading (--phase-sign -1)")
        self._results["phase"] = save(phase, "phase")
        if data.magnitude is not None:
            self._results["magnitude"] = save(data.magnitude, "magnitude")
        meta = {
            "echo_times": list(data.echo_times),
            "field_strength": float(data.field_strength),
            "field_strength_source": data.field_strength_source,
            "voxel_size": [float(v) for v in data.voxel_size],
            "b0_dir": [float(v) for v in data.b0_dir],
            "shape": list(data.phase.shape),
            "notes": notes,
            "has_magnitude": data.magnitude is not None,
        }
        path = cwd / "meta.json"
        path.write_text(json.dumps(meta, indent=2))
        self._results["meta"] = str(path)
        return runtime
