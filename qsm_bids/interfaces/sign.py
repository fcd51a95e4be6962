"""The phase-sign check after dipole inversion (see :mod:`qsm_bids.core.sign`)."""

from __future__ import annotations

import json

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
    """Check the paramagnetic tail of the map; in 'auto' mode, flip a reversed map."""

    input_spec = _CheckInputSpec
    output_spec = _CheckOutputSpec

    def _run_interface(self, runtime):
        chi = read_volume(self.inputs.chi)
        check = check_phase_sign(chi, read_mask(self.inputs.mask))
        mode = self.inputs.mode
        flip = mode == "auto" and check.sign < 0
        if flip:
            action = "the map had a negative skewness: phase sign reversed, outputs negated"
        elif check.sign < 0:
            action = (
                "WARNING: the map has a negative skewness (veins and iron-rich nuclei "
                "negative); the phase sign may be reversed, try --phase-sign "
                + ("-1" if mode == "1" else "1")
            )
        elif check.sign == 0:
            action = "inconclusive (skewness near 0); the sign was left as given"
        else:
            action = "consistent: paramagnetic tail positive"
        self._results["sign"] = -1 if flip else 1
        self._results["chi"] = (
            write_like(-chi, self.inputs.chi, "chi_signed", runtime.cwd)
            if flip
            else self.inputs.chi
        )
        self._results["report"] = json.dumps(
            {
                "Option": mode,
                "Skewness": round(check.skewness, 4),
                "Voxels": check.voxels,
                "Negated": flip,
                "Result": action,
            }
        )
        return runtime
