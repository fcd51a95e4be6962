"""One nipype interface per pipeline stage; each calls the algorithm chosen in the recipe.

The numerics live in :mod:`qsm_bids.core`; these classes only read volumes, call
:meth:`StageInterface.call` and write the results into the node's working directory.
"""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import File, TraitedSpec, isdefined, traits

from qsm_bids import registry
from qsm_bids.core.background.feedback import remove_with_feedback, susceptibility_field
from qsm_bids.core.mask import combine_echoes
from qsm_bids.core.physics import hz_to_ppm
from qsm_bids.core.quality import inverse_noise_weights
from qsm_bids.core.reference import reference_with_fallback
from qsm_bids.core.relaxometry import t2star_from_r2star
from qsm_bids.interfaces.base import (
    StageInputSpec,
    StageInterface,
    read_mask,
    read_meta,
    read_volume,
    write_like,
)


def _optional(path) -> np.ndarray | None:
    return read_volume(path) if isdefined(path) and path else None


def _noise_weights(noise_path, mask: np.ndarray):
    """A reader of the data weights (inverse field-noise SD), for :meth:`call_offering`."""
    return lambda: (
        None if (noise := _optional(noise_path)) is None else inverse_noise_weights(noise, mask)
    )


def _echo_magnitude(path):
    """A reader of the echo-combined (root-sum-of-squares) magnitude."""
    return lambda: None if (mag := _optional(path)) is None else combine_echoes(mag, "rss")


# ---------------------------------------------------------------------------------- mask
class _MaskInputSpec(StageInputSpec):
    phase = File(exists=True, mandatory=True, desc="4D phase (rad)")
    magnitude = File(exists=True, desc="4D magnitude")
    mask_file = File(exists=True, desc="user-supplied brain mask; replaces the algorithm")


class _MaskOutputSpec(TraitedSpec):
    mask = File(exists=True, desc="brain mask (uint8)")


class BrainMask(StageInterface):
    """Brain mask by the chosen algorithm (from the magnitude, or from the phase quality),
    or the user's mask file."""

    stage = "mask"
    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        shape = tuple(meta["shape"][:3])
        if isdefined(self.inputs.mask_file):
            mask = read_mask(self.inputs.mask_file)
            if mask.shape[:3] != shape:
                raise ValueError(
                    f"{self.inputs.mask_file}: mask shape {mask.shape} does not match the "
                    f"data's {shape}"
                )
            mask = mask.reshape(shape)
        else:
            vox = tuple(meta["voxel_size"])
            if self.inputs.algorithm == "magnitude" and not isdefined(self.inputs.magnitude):
                raise ValueError("mask algorithm 'magnitude' needs magnitude images")
            mask = self.call_offering(
                magnitude=lambda: _optional(self.inputs.magnitude),
                phase=lambda: read_volume(self.inputs.phase),
                voxel_size=vox,
                echo_times=tuple(meta["echo_times"]),
            )
        self._results["mask"] = write_like(mask, self.inputs.phase, "mask", runtime.cwd)
        return runtime


# -------------------------------------------------------------------------------- unwrap
class _UnwrapInputSpec(StageInputSpec):
    phase = File(exists=True, mandatory=True, desc="4D wrapped phase (rad)")
    magnitude = File(exists=True, desc="4D magnitude")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class _UnwrapOutputSpec(TraitedSpec):
    unwrapped = File(exists=True, desc="4D unwrapped phase (rad)")


class UnwrapPhase(StageInterface):
    """Spatial and temporal unwrapping of all echoes."""

    stage = "unwrap"
    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        out = self.call(
            read_volume(self.inputs.phase),
            _optional(self.inputs.magnitude),
            read_mask(self.inputs.mask),
            tuple(meta["echo_times"]),
            tuple(meta["voxel_size"]),
        )
        self._results["unwrapped"] = write_like(
            out.astype(np.float32), self.inputs.phase, "unwrapped", runtime.cwd
        )
        return runtime


# ------------------------------------------------------------------------------- combine
class _CombineInputSpec(StageInputSpec):
    unwrapped = File(exists=True, mandatory=True, desc="4D unwrapped phase (rad)")
    magnitude = File(exists=True, desc="4D magnitude")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class _CombineOutputSpec(TraitedSpec):
    field = File(exists=True, desc="total field map (Hz)")
    noise = File(exists=True, desc="standard deviation of the total field (Hz)")


class CombineEchoes(StageInterface):
    """Multi-echo combination into the total field map (Hz)."""

    stage = "combine"
    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        mask = read_mask(self.inputs.mask)
        field, noise = self.call(
            read_volume(self.inputs.unwrapped),
            _optional(self.inputs.magnitude),
            mask,
            tuple(meta["echo_times"]),
            tuple(meta["voxel_size"]),
        )
        ref = self.inputs.mask
        self._results["field"] = write_like(
            np.where(mask, field, 0).astype(np.float32), ref, "field_hz", runtime.cwd
        )
        self._results["noise"] = write_like(
            np.where(mask, noise, 0).astype(np.float32), ref, "field_noise_hz", runtime.cwd
        )
        return runtime


# ---------------------------------------------------------------------------- background
class _BackgroundInputSpec(StageInputSpec):
    field = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    noise = File(exists=True, desc="SD of the total field (Hz), for weighted methods")
    chi = File(
        exists=True,
        desc="susceptibility estimate (ppm) whose field is removed first and added back "
        "(background removal with susceptibility feedback)",
    )
    chi_mask = File(exists=True, desc="where chi is defined (its sources)")
    previous_local = File(
        exists=True,
        desc="local field (Hz) chi was computed from, on chi_mask: the feedback pass is "
        "over-relaxed from it (the recipe's feedback_relaxation)",
    )
    first_local = File(
        exists=True,
        desc="local field (Hz) of the plain pass on the same mask: the feedback pass then "
        "removes the background of chi's field alone (linear form)",
    )


class _BackgroundOutputSpec(TraitedSpec):
    local_field = File(exists=True, desc="local field (Hz)")
    local_mask = File(exists=True, desc="mask where the local field is valid")


class BackgroundRemoval(StageInterface):
    """Background field removal: total field (Hz) -> local field (Hz)."""

    stage = "background"
    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        mask = read_mask(self.inputs.mask)
        geometry = (tuple(meta["voxel_size"]), tuple(meta["b0_dir"]))
        first = None
        if isdefined(self.inputs.first_local) and isdefined(self.inputs.chi):
            first = read_volume(self.inputs.first_local)
        # the linear form of the feedback pass does not need the total field
        field = read_volume(self.inputs.field) if first is None else None
        if isdefined(self.inputs.chi):
            # feedback pass: remove(field - D chi) + D chi (core.background.feedback), in
            # the linear form first - remove(D chi) + D chi when the plain pass is given
            chi_mask = read_mask(self.inputs.chi_mask)
            chi_field = susceptibility_field(
                read_volume(self.inputs.chi), chi_mask, *geometry,
                field_strength=float(meta["field_strength"]),
            )  # fmt: skip
            previous = None
            if isdefined(self.inputs.previous_local):
                previous = (read_volume(self.inputs.previous_local), chi_mask)
            local, local_mask = remove_with_feedback(
                lambda f, *a: self.call_offering(
                    f, *a, weights=_noise_weights(self.inputs.noise, mask)
                ),
                field,
                mask,
                *geometry,
                chi_field,
                previous=previous,
                relaxation=float(self.resolved_params()[registry.FEEDBACK_RELAXATION]),
                first=first,
            )
        else:
            local, local_mask = self.call_offering(
                field, mask, *geometry, weights=_noise_weights(self.inputs.noise, mask)
            )
        ref = self.inputs.mask
        self._results["local_field"] = write_like(
            np.where(local_mask, local, 0).astype(np.float32), ref, "local_hz", runtime.cwd
        )
        self._results["local_mask"] = write_like(
            np.asarray(local_mask, bool), ref, "local_mask", runtime.cwd
        )
        return runtime


# ----------------------------------------------------------------------------- inversion
class _InversionInputSpec(StageInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (Hz)")
    mask = File(exists=True, mandatory=True, desc="mask of the local field")
    noise = File(exists=True, desc="SD of the total field (Hz), for weighted methods")
    magnitude = File(exists=True, desc="4D magnitude, for methods with magnitude priors")


class _InversionOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="susceptibility (ppm), not yet referenced")


class DipoleInversion(StageInterface):
    """Dipole inversion: local field (Hz, converted to ppm of B0) -> susceptibility (ppm)."""

    stage = "inversion"
    input_spec = _InversionInputSpec
    output_spec = _InversionOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        local_ppm = hz_to_ppm(read_volume(self.inputs.local_field), meta["field_strength"])
        mask = read_mask(self.inputs.mask)
        chi = self.call_offering(
            local_ppm.astype(np.float32),
            mask,
            tuple(meta["voxel_size"]),
            tuple(meta["b0_dir"]),
            weights=_noise_weights(self.inputs.noise, mask),
            magnitude=_echo_magnitude(self.inputs.magnitude),
        )
        self._results["chi"] = write_like(
            chi.astype(np.float32), self.inputs.mask, "chi_raw", runtime.cwd
        )
        return runtime


# ----------------------------------------------------------------------------- reference
class _ReferenceInputSpec(StageInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask of the susceptibility map")
    reference_mask = File(exists=True, desc="reference region for algorithm 'mask'")
    r2star = File(exists=True, desc="R2* map (1/s), for algorithm 'csf'")
    magnitude = File(exists=True, desc="4D magnitude, for algorithm 'csf'")


class _ReferenceOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="referenced susceptibility (ppm)")
    note = traits.Str(desc="what was done when the chosen referencing was not possible")


class Reference(StageInterface):
    """Shift the susceptibility map so the reference region has zero mean."""

    stage = "reference"
    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        region = None
        if isdefined(self.inputs.reference_mask):
            region = read_mask(self.inputs.reference_mask)
        meta = read_meta(self.inputs.meta)
        chi_in = read_volume(self.inputs.chi)
        mask = read_mask(self.inputs.mask)
        chi, note = reference_with_fallback(
            lambda: self.call_offering(
                chi_in,
                mask,
                region=region,
                r2star=lambda: _optional(self.inputs.r2star),
                magnitude=lambda: _optional(self.inputs.magnitude),
                voxel_size=tuple(meta["voxel_size"]),
            ),
            self.inputs.algorithm,
            chi_in,
            mask,
            region=region,
        )
        self._results["chi"] = write_like(chi, self.inputs.chi, "chi", runtime.cwd)
        self._results["note"] = note or ""
        return runtime


# -------------------------------------------------------------------------------- r2star
class _R2StarInputSpec(StageInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4D magnitude")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class _R2StarOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")


class R2Star(StageInterface):
    """R2* and T2* maps from the echo magnitudes."""

    stage = "r2star"
    input_spec = _R2StarInputSpec
    output_spec = _R2StarOutputSpec

    def _run_interface(self, runtime):
        meta = read_meta(self.inputs.meta)
        r2 = self.call(
            read_volume(self.inputs.magnitude),
            tuple(meta["echo_times"]),
            read_mask(self.inputs.mask),
        ).astype(np.float32)
        self._results["r2star"] = write_like(r2, self.inputs.mask, "r2star", runtime.cwd)
        self._results["t2star"] = write_like(
            t2star_from_r2star(r2).astype(np.float32), self.inputs.mask, "t2star", runtime.cwd
        )
        return runtime
