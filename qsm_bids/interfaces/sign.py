"""The phase-sign check after dipole inversion (see :mod:`qsm_bids.core.sign`)."""

from __future__ import annotations

import json
import logging

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from qsm_bids.core.sign import check_phase_sign
from qsm_bids.interfaces.base import read_mask, read_volume, write_like

PHASE_SIGN_MODES = ("auto", "1", "-1")

log = logging.getLogger("qsm_bids")


class _CheckInputSpec(BaseInterfaceInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask of the susceptibility map")
    mode = traits.Enum(
        *PHASE_SIGN_MODES,
        usedefault=True,
        desc="'auto': negate the outputs when the check finds the sign reversed; "
        "'1' or '-1': the sign was set by the user, only report",
    )


class _CheckOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="the susceptibility map, negated where the sign was reversed")
    sign = traits.Int(desc="+1, or -1 where the field maps are to be negated")
    report = traits.Str(desc="the check and what was done (JSON)")


class CheckPhaseSign(SimpleInterface):
    """Check the paramagnetic tail of the map; in 'auto' mode, flip a reversed map.

    Where the evidence is weak (:func:`qsm_bids.core.sign.check_phase_sign` abstains) the
    sign is kept as given, with a warning in 'auto' mode; the report (the sidecars'
    ``PhaseSignCheck``) holds the decision and the evidence in every mode.
    """

    input_spec = _CheckInputSpec
    output_spec = _CheckOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.chi)
        chi = read_volume(self.inputs.chi)
        check = check_phase_sign(
            chi, read_mask(self.inputs.mask), voxel_size=tuple(img.header.get_zooms()[:3])
        )
        mode = self.inputs.mode
        flip = mode == "auto" and check.sign < 0
        warning = None
        if flip:
            action = "the map's strong tail is diamagnetic: phase sign reversed, outputs negated"
        elif check.sign < 0:
            action = warning = (
                "the map's strong tail is diamagnetic (veins and iron-rich nuclei "
                "negative); the phase sign may be reversed, try --phase-sign "
                + ("-1" if mode == "1" else "1")
            )
        elif check.sign == 0:
            action = f"{check.reason}; the sign was left as given"
            if mode == "auto":
                warning = (
                    "the automatic phase-sign check abstained (weak evidence: "
                    f"{check.reason.removeprefix('abstained: ')}); the sign was left as "
                    "given: check that veins and the globus pallidus are positive, or set "
                    "--phase-sign"
                )
        else:
            action = "consistent: the strong tail is paramagnetic"
        if warning:
            log.warning("phase-sign check: %s", warning)
        self._results["sign"] = -1 if flip else 1
        self._results["chi"] = (
            write_like(-chi, self.inputs.chi, "chi_signed", runtime.cwd)
            if flip
            else self.inputs.chi
        )
        report = {
            "Option": mode,
            "Decision": check.decision,
            "Negated": flip,
            "Result": action,
            "Skewness": round(check.skewness, 4),
            "Voxels": check.voxels,
            "Evidence": {
                "Measure": "tail asymmetry (P - N) / (P + N) of the voxels beyond "
                "+-threshold (and +-2 threshold: strong tails) around the median, focal "
                "sources excluded (qsm_bids.core.sign)",
                "TailAsymmetry": round(check.asymmetry, 4),
                "PositiveTailVoxels": check.positive_voxels,
                "NegativeTailVoxels": check.negative_voxels,
                "StrongTailAsymmetry": round(check.strong_asymmetry, 4),
                "StrongPositiveVoxels": check.strong_positive_voxels,
                "StrongNegativeVoxels": check.strong_negative_voxels,
                "TailThresholdPpm": round(check.threshold_ppm, 4),
                "Margin": check.margin,
                "MinTailVoxels": check.min_tail_voxels,
                "ExcludedFocalVoxels": check.excluded_voxels,
            },
        }
        if warning:
            report["Warning"] = warning
        self._results["report"] = json.dumps(report)
        return runtime
