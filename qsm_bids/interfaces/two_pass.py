"""Nodes of the two-pass inversion for strong sources
(:mod:`qsm_bids.core.inversion.two_pass`): fill the mask's holes; combine the passes."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec

from qsm_bids.core.inversion.two_pass import (
    combine_two_pass,
    fill_from_second_pass,
    fill_mask_holes,
)
from qsm_bids.interfaces.base import read_mask, read_volume, write_like


class _FillInputSpec(BaseInterfaceInputSpec):
    mask = File(exists=True, mandatory=True, desc="brain mask, possibly with holes")


class _FillOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="the mask with its enclosed holes filled")


class FillMaskHoles(SimpleInterface):
    """The mask of the second pass: enclosed holes filled."""

    input_spec = _FillInputSpec
    output_spec = _FillOutputSpec

    def _run_interface(self, runtime):
        filled = fill_mask_holes(read_mask(self.inputs.mask))
        self._results["mask"] = write_like(filled, self.inputs.mask, "filled_mask", runtime.cwd)
        return runtime


class _CombineInputSpec(BaseInterfaceInputSpec):
    chi_reliable = File(exists=True, mandatory=True, desc="pass 1 susceptibility (ppm)")
    reliable_mask = File(exists=True, mandatory=True, desc="pass 1 mask")
    local_reliable = File(exists=True, mandatory=True, desc="pass 1 local field (Hz)")
    chi_filled = File(exists=True, mandatory=True, desc="pass 2 susceptibility (ppm)")
    filled_mask = File(exists=True, mandatory=True, desc="pass 2 mask")
    local_filled = File(exists=True, mandatory=True, desc="pass 2 local field (Hz)")


class _CombineOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="combined susceptibility (ppm, not referenced)")
    mask = File(exists=True, desc="union of the two masks")
    local_field = File(exists=True, desc="pass 1 local field, pass 2 in the holes (Hz)")


class TwoPassCombine(SimpleInterface):
    """Pass 1 where it exists, pass 2 in the holes (maps and local fields)."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        m1 = read_mask(self.inputs.reliable_mask)
        m2 = read_mask(self.inputs.filled_mask)
        chi, mask = combine_two_pass(
            read_volume(self.inputs.chi_reliable), m1, read_volume(self.inputs.chi_filled), m2
        )
        local = fill_from_second_pass(
            read_volume(self.inputs.local_reliable), m1, read_volume(self.inputs.local_filled), m2
        )
        ref = self.inputs.chi_reliable
        self._results["chi"] = write_like(chi, ref, "chi", runtime.cwd)
        self._results["mask"] = write_like(mask, ref, "mask", runtime.cwd)
        self._results["local_field"] = write_like(local, ref, "local_field", runtime.cwd)
        return runtime
