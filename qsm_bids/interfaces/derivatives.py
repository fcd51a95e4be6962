"""Writing a run's results as BIDS derivatives (atomically, sidecars after images)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from qsm_bids import __version__
from qsm_bids.bids.derivatives import derivative_path, sidecar_for, write_nifti_atomic
from qsm_bids.core.streaking import streaking_index
from qsm_bids.interfaces.base import read_meta
from qsm_bids.interfaces.load import run_from_json

#: input name -> (suffix, desc, units, is_mask, stages whose provenance applies)
OUTPUTS: dict[str, tuple[str, str | None, str, bool, tuple[str, ...]]] = {
    "chi": (
        "Chimap",
        None,
        "ppm",
        False,
        ("mask", "unwrap", "combine", "background", "inversion", "reference"),
    ),
    "mask": ("mask", "brain", "", True, ("mask",)),
    "local_mask": ("mask", "local", "", True, ("mask", "background")),
    "total_field": ("fieldmap", "total", "Hz", False, ("mask", "unwrap", "combine")),
    "local_field": ("fieldmap", "local", "Hz", False, ("mask", "unwrap", "combine", "background")),
    "r2star": ("R2starmap", None, "1/s", False, ("mask", "r2star")),
    "t2star": ("T2starmap", None, "s", False, ("mask", "r2star")),
}

#: input name -> the sidecar's ``Description`` (what the image is, in words)
DESCRIPTIONS: dict[str, str] = {
    "chi": "Magnetic susceptibility (ppm) from the dipole inversion of the local field, "
    "relative to the reference of Stages.reference",
    "mask": "Brain mask the phase was unwrapped and the field fitted in",
    "local_mask": "Mask of the local field and of the susceptibility map: the brain mask "
    "after background field removal (eroded where the method needs it)",
    "total_field": "Total field offset (Hz) fitted over the echoes from the unwrapped phase, "
    "background fields included; not a field map for distortion correction",
    "local_field": "Local (tissue) field offset (Hz): the total field after background field "
    "removal",
    "r2star": "Apparent transverse relaxation rate R2* (1/s) fitted to the echo magnitudes",
    "t2star": "Apparent transverse relaxation time T2* (s), 1/R2*",
}

#: outputs that change sign with the phase convention (chi comes already corrected from
#: :class:`qsm_bids.interfaces.sign.CheckPhaseSign`)
SIGNED = ("total_field", "local_field")


def _streaking(chi: np.ndarray, mask_file: str, meta: dict) -> float:
    """The streaking index of the final map inside the mask it is defined on
    (:func:`qsm_bids.core.streaking.streaking_index`: one real FFT of the padded mask box);
    NaN where the index is undefined (a constant map, fewer than 2 voxels)."""
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    try:
        return float(streaking_index(chi, mask, meta["voxel_size"], meta["b0_dir"]))
    except ValueError:  # fewer than 2 voxels, no usable shell
        return float("nan")


def run_hash_field(run_hash: str) -> dict[str, str]:
    """``{"RunHash": run_hash}`` for a sidecar, or nothing when ``run_hash`` is empty: the
    hash ties a derivative to what produced it (inputs, recipe, version)."""
    return {"RunHash": run_hash} if run_hash else {}


class _WriteInputSpec(BaseInterfaceInputSpec):
    run_json = traits.Str(mandatory=True, desc="the run (run_to_json)")
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw BIDS root (for Sources URIs)")
    provenance = traits.Str(mandatory=True, desc="recipe provenance (JSON)")
    meta = File(exists=True, mandatory=True, desc="run metadata JSON")
    chi = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    local_mask = File(exists=True, mandatory=True)
    total_field = File(exists=True, mandatory=True)
    local_field = File(exists=True, mandatory=True)
    r2star = File(exists=True)
    t2star = File(exists=True)
    sign = traits.Int(1, usedefault=True, desc="-1: negate the field maps")
    sign_check = traits.Str(desc="phase-sign check report (JSON)")
    reference_note = traits.Str(desc="a note from the referencing stage")
    run_hash = traits.Str(
        "",
        usedefault=True,
        desc="provenance hash of what produced the outputs (inputs, recipe, version), "
        "written as RunHash into every sidecar when non-empty",
    )


class _WriteOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="derivative files written")
    streaking_index = traits.Float(desc="the Chimap's streaking index (NaN: undefined)")


class WriteDerivatives(SimpleInterface):
    """Write every output of one run with its JSON sidecar into the derivatives folder."""

    input_spec = _WriteInputSpec
    output_spec = _WriteOutputSpec

    def _run_interface(self, runtime):
        run = run_from_json(self.inputs.run_json)
        meta = read_meta(self.inputs.meta)
        recipe = json.loads(self.inputs.provenance)
        source = nb.load(str(run.phase_files[0]))
        b0_source = meta.get("field_strength_source")  # absent in an old work directory
        common = {
            "EchoTime": meta["echo_times"],
            "MagneticFieldStrength": round(float(meta["field_strength"]), 6),  # T, to 1 uT
            **({"FieldStrengthSource": b0_source} if b0_source else {}),
            "B0Direction": meta["b0_dir"],
            "Pipeline": recipe["Pipeline"],
            "SoftwareVersion": f"qsm_bids {__version__}",
            **run_hash_field(self.inputs.run_hash),
        }
        notes = list(meta["notes"])
        if isdefined(self.inputs.reference_note) and self.inputs.reference_note:
            notes.append(self.inputs.reference_note)
        if notes:
            common["ProcessingNotes"] = notes
        if isdefined(self.inputs.sign_check) and self.inputs.sign_check:
            common["PhaseSignCheck"] = json.loads(self.inputs.sign_check)
            if common["PhaseSignCheck"].get("Warning"):  # shown as a warning in the report
                common["PhaseSignWarning"] = common["PhaseSignCheck"]["Warning"]
        negate = self.inputs.sign < 0
        written = []
        for key, (suffix, desc, units, is_mask, stages) in OUTPUTS.items():
            value = getattr(self.inputs, key)
            if not isdefined(value):
                continue
            data = np.asarray(nb.load(value).dataobj)
            if negate and key in SIGNED:
                data = -data
            path = derivative_path(Path(self.inputs.output_dir), run, suffix, desc=desc)
            provenance = dict(common)
            provenance["Stages"] = {s: recipe[s] for s in stages}
            sidecar = sidecar_for(
                run,
                bids_dir=Path(self.inputs.bids_dir),
                units=units or None,
                skull_stripped=True,
                provenance=provenance,
                description=DESCRIPTIONS[key],
                spatial_reference=run.phase_files[0],  # native: the grid of the echo images
            )
            if is_mask:
                sidecar["Type"] = "Brain"
            if key == "chi":
                value = _streaking(data, self.inputs.local_mask, meta)
                self._results["streaking_index"] = value
                if np.isfinite(value):
                    sidecar["StreakingIndex"] = round(value, 4)
            write_nifti_atomic(
                path,
                (data > 0) if is_mask else data.astype(np.float32),
                source.affine,
                header=source.header,
                dtype=np.uint8 if is_mask else np.float32,
                sidecar=sidecar,
            )
            written.append(str(path))
        self._results["out_files"] = written
        return runtime
