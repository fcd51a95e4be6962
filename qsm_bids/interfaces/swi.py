"""Nipype interface of the SWI and minIP derivatives (:mod:`qsm_bids.core.swi`)."""

from __future__ import annotations

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
from qsm_bids.core.swi import minimum_intensity_projection, slab_voxels, swi
from qsm_bids.interfaces.base import read_meta
from qsm_bids.interfaces.derivatives import run_hash_field
from qsm_bids.interfaces.load import run_from_json

#: BIDS suffix of both images: an SWI is a T2*-weighted image, and ``<prefix>_desc-swi_T2starw``
#: and ``<prefix>_desc-minip_T2starw`` pass the validator's derivative rules (``desc-swi_MEGRE``
#: does not: MEGRE needs the echo entity).
SWI_SUFFIX = "T2starw"

DESCRIPTIONS = {
    "swi": "Susceptibility-weighted image (CLEAR-SWI style, Eckstein et al. 2021): "
    "echo-time-weighted combination of the echoes' magnitudes times a negative phase mask "
    "from the sign-checked local field; paramagnetic veins are dark.",
    "minip": "Minimum-intensity projection of the SWI over a sliding slab along the voxel "
    "axis closest to B0, on the SWI's grid.",
}


class _SWIInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude (one volume per echo)")
    local_field = File(exists=True, mandatory=True, desc="local field (Hz), before the check")
    sign = traits.Int(1, usedefault=True, desc="the phase-sign check's -1/1 (negates the field)")
    mask = File(exists=True, desc="where the local field is defined")
    meta = File(exists=True, mandatory=True, desc="run metadata JSON (echo times, voxel size)")
    power = traits.Float(4.0, usedefault=True, desc="phase-mask exponent")
    slab_mm = traits.Float(8.0, usedefault=True, desc="minIP slab thickness (mm)")
    run_json = traits.Str(mandatory=True, desc="the run (run_to_json)")
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    bids_dir = traits.Str(mandatory=True, desc="raw BIDS root (for Sources URIs)")
    run_hash = traits.Str("", usedefault=True, desc="RunHash of the sidecars (when non-empty)")


class _SWIOutputSpec(TraitedSpec):
    swi = File(desc="SWI as written to the derivatives")
    minip = File(desc="minIP as written to the derivatives")
    out_files = traits.List(traits.Str, desc="derivative files written")


class SWI(SimpleInterface):
    """Compute the SWI and its minIP and write them with sidecars to the derivatives.

    The field is negated when the phase-sign check said so, so a paramagnetic vein has a
    positive field and is darkened (:func:`qsm_bids.core.swi.phase_mask`). The phase mask
    uses the mean echo time; the minIP axis is the voxel axis closest to B0.
    """

    input_spec = _SWIInputSpec
    output_spec = _SWIOutputSpec

    def _run_interface(self, runtime):
        run = run_from_json(self.inputs.run_json)
        meta = read_meta(self.inputs.meta)
        mag_img = nb.load(self.inputs.magnitude)
        mag = np.asarray(mag_img.dataobj, dtype=np.float32)
        if mag.ndim == 3:
            mag = mag[..., None]
        field = np.asarray(nb.load(self.inputs.local_field).dataobj, dtype=np.float32)
        field = field * (-1.0 if self.inputs.sign < 0 else 1.0)
        mask = None
        if isdefined(self.inputs.mask):
            mask = np.asarray(nb.load(self.inputs.mask).dataobj) > 0
        tes = np.asarray(meta["echo_times"], dtype=np.float64)[: mag.shape[-1]]
        te_ref = float(np.mean(tes))
        out = swi(mag, tes, field, power=self.inputs.power, echo_time_s=te_ref, mask=mask)
        axis = int(np.argmax(np.abs(np.asarray(meta["b0_dir"], dtype=float))))
        slab = slab_voxels(self.inputs.slab_mm, float(meta["voxel_size"][axis]))
        mip = minimum_intensity_projection(out, slab, axis=axis)
        source = nb.load(str(run.phase_files[0]))
        params = {
            "PhaseMaskPower": float(self.inputs.power),
            "PhaseMaskEchoTime": te_ref,
            "MagnitudeCombination": "echo-time-weighted root-sum-of-squares",
            "PhaseMaskSource": "local field (Hz), sign-checked",
        }
        written = {}
        for key, data, extra in (
            ("swi", out, {}),
            ("minip", mip, {"SlabThickness": slab * float(meta["voxel_size"][axis]),
                            "SlabVoxels": slab, "ProjectionAxis": axis}),
        ):  # fmt: skip
            path = derivative_path(Path(self.inputs.output_dir), run, SWI_SUFFIX, desc=key)
            sidecar = sidecar_for(
                run,
                bids_dir=Path(self.inputs.bids_dir),
                skull_stripped=False,
                provenance={
                    "EchoTime": meta["echo_times"],
                    "SWIParameters": {**params, **extra},
                    "SoftwareVersion": f"qsm_bids {__version__}",
                    **run_hash_field(self.inputs.run_hash),
                },
                description=DESCRIPTIONS[key],
                spatial_reference=run.phase_files[0],
            )
            write_nifti_atomic(
                path,
                np.nan_to_num(data).astype(np.float32),
                source.affine,
                header=source.header,
                dtype=np.float32,
                sidecar=sidecar,
            )
            written[key] = str(path)
        self._results["swi"] = written["swi"]
        self._results["minip"] = written["minip"]
        self._results["out_files"] = list(written.values())
        return runtime
