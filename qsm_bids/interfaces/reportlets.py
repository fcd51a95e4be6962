"""Reportlets: nodes that draw each stage's QC figure during the run (as niworkflows does).

A stage builder given a :class:`Reportlets` adds one node per figure; the node reads the
stage's intermediate files from the work directory and writes the figure atomically to
``<output_dir>/sub-<label>/figures/<run prefix>_desc-<what>_qc.png``
(:func:`qsm_bids.report.reportlets.figure_path`). The HTML report is assembled from these
files (:mod:`qsm_bids.report.assemble`).

A figure that cannot be drawn does not fail the run: the node logs a warning and writes
nothing, and the report draws what it can from the derivatives instead.

Wiring (per run, ``rep = Reportlets.for_run(output_dir, run)``): ``reportlets=rep`` to
``init_mask_wf`` (``desc-brainmask``), ``init_unwrap_wf`` (``desc-unwrapped``),
``init_echo_combination_wf`` (``desc-echofit``), ``init_r2star_wf`` (``desc-r2star``),
``init_registration_wf`` (``desc-registration``, ``desc-atlas``) and
``init_segmentation_wf`` (``desc-seg<name>``). The figures of what is written after the
phase-sign check (``desc-totalfield``, ``desc-localfield``, ``desc-chimap``,
``desc-streaking``, ``desc-reference``) come from
:func:`qsm_bids.pipeline.susceptibility.init_estimate_reportlets_wf`, fed with the final
estimate, the checked map and the check's sign (a node downstream of every stage, so
these cannot sit inside the stage builders without a cycle).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.pipeline import engine as pe

from qsm_bids.bids.derivatives import derivative_path
from qsm_bids.bids.layout import Run
from qsm_bids.interfaces.base import read_mask, read_meta, read_volume, write_like
from qsm_bids.interfaces.load import run_from_json, run_to_json

#: qsm_bids's own logger: its handlers are set up per invocation (the console and the log file)
log = logging.getLogger("qsm_bids")


@dataclass(frozen=True)
class Reportlets:
    """Where a run's reportlets go: what the stage builders need to add their nodes.

    Attributes
    ----------
    output_dir : str
        Root of the derivatives (``OUTPUT_DIR``).
    run_json : str
        The run, as :func:`qsm_bids.interfaces.load.run_to_json` writes it (as the
        derivatives writers get it).
    """

    output_dir: str
    run_json: str

    @classmethod
    def for_run(cls, output_dir: Path | str, run: Run) -> Reportlets:
        """The reportlets of ``run`` under ``output_dir``."""
        return cls(output_dir=str(output_dir), run_json=run_to_json(run))

    @property
    def prefix(self) -> str:
        """The run's entities as in its derivative names, e.g. ``"sub-01_ses-1_run-1"``."""
        name = derivative_path(Path(self.output_dir), run_from_json(self.run_json), "qc").name
        return name.removesuffix("_qc.nii.gz")

    def node(self, interface: type[SimpleInterface], name: str, **inputs: Any) -> pe.Node:
        """A node drawing ``interface``'s figure(s) for this run.

        Always rerun (a figure deleted from the output folder is drawn again), and run in
        the main process like the derivatives writers (a figure takes about a second: not
        worth a batch job on a cluster)."""
        return pe.Node(
            interface(output_dir=self.output_dir, prefix=self.prefix, **inputs),
            name=name,
            mem_gb=0.5,
            overwrite=True,
            run_without_submitting=True,
        )


# --------------------------------------------------------------------------------------
# Base
# --------------------------------------------------------------------------------------


class _ReportletInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    prefix = traits.Str(mandatory=True, desc="the run's entities, e.g. sub-01_run-1")


class _ReportletOutputSpec(TraitedSpec):
    out_report = traits.List(traits.Str, desc="figures written")


class ReportletInterface(SimpleInterface):
    """Base class: :meth:`draw` returns the figures written; errors become warnings."""

    input_spec = _ReportletInputSpec
    output_spec = _ReportletOutputSpec

    def path(self, desc: str) -> Path:
        """Destination of the reportlet ``desc`` of this run."""
        from qsm_bids.report.reportlets import figure_path

        return figure_path(Path(self.inputs.output_dir), self.inputs.prefix, desc)

    def draw(self, cwd: Path) -> list[Path]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_interface(self, runtime):
        try:
            written = self.draw(Path(runtime.cwd))
        except Exception as exc:  # a QC figure must not cost the user the maps
            log.warning("%s: no QC figure for %s: %s", type(self).__name__, self.inputs.prefix, exc)
            written = []
        self._results["out_report"] = [str(p) for p in written]
        return runtime


def _opt(value) -> Path | None:
    return Path(value) if isdefined(value) and value else None


def _signed(path: str, sign, cwd: Path) -> Path:
    """``path`` as written to the derivatives: negated when the phase-sign check said so."""
    if not isdefined(sign) or int(sign) >= 0:
        return Path(path)
    return Path(write_like(-read_volume(path), path, "negated", cwd))


# --------------------------------------------------------------------------------------
# One interface per stage
# --------------------------------------------------------------------------------------


class _BrainMaskInputSpec(_ReportletInputSpec):
    mask = File(exists=True, mandatory=True, desc="brain mask")
    magnitude = File(exists=True, desc="4D magnitude")
    phase = File(exists=True, desc="4D phase (rad), shown without magnitude")


class BrainMaskReportlet(ReportletInterface):
    """``desc-brainmask``: the mask's outline over the first-echo magnitude (or phase)."""

    input_spec = _BrainMaskInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import brainmask_figure

        out = brainmask_figure(
            self.path("brainmask"),
            Path(self.inputs.mask),
            magnitude=_opt(self.inputs.magnitude),
            phase=_opt(self.inputs.phase),
        )
        return [out]


class _UnwrapInputSpec(_ReportletInputSpec):
    unwrapped = File(exists=True, mandatory=True, desc="4D unwrapped phase (rad)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    meta = File(exists=True, desc="run metadata JSON (echo times)")


class UnwrapReportlet(ReportletInterface):
    """``desc-unwrapped``: every echo's unwrapped phase, one row per echo."""

    input_spec = _UnwrapInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import unwrapped_figure

        tes = read_meta(self.inputs.meta)["echo_times"] if isdefined(self.inputs.meta) else ()
        out = unwrapped_figure(
            self.path("unwrapped"),
            Path(self.inputs.unwrapped),
            Path(self.inputs.mask),
            echo_times_s=tes,
        )
        return [out]


class _EchoFitInputSpec(_ReportletInputSpec):
    noise = File(exists=True, mandatory=True, desc="SD of the total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class EchoFitReportlet(ReportletInterface):
    """``desc-echofit``: the echo fit's noise (SD of the total field, Hz)."""

    input_spec = _EchoFitInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import noise_figure

        return [noise_figure(self.path("echofit"), Path(self.inputs.noise), Path(self.inputs.mask))]


class _FieldInputSpec(_ReportletInputSpec):
    field = File(exists=True, mandatory=True, desc="total or local field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask (outlined)")
    local_mask = File(exists=True, desc="where a local field is defined")
    which = traits.Enum("total", "local", usedefault=True, desc="the field drawn")
    sign = traits.Int(desc="-1: the phase-sign check negates the field maps written")


class FieldReportlet(ReportletInterface):
    """``desc-totalfield`` / ``desc-localfield``: a field map as written (negated where
    the phase-sign check reversed the convention)."""

    input_spec = _FieldInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import field_figure

        field = _signed(self.inputs.field, self.inputs.sign, cwd)
        out = field_figure(
            self.path(f"{self.inputs.which}field"),
            field,
            Path(self.inputs.mask),
            local_mask=_opt(self.inputs.local_mask),
            title=f"{self.inputs.which} field",
        )
        return [out]


class _ChimapInputSpec(_ReportletInputSpec):
    chi = File(exists=True, mandatory=True, desc="referenced susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="where chi is defined (local mask)")
    brain_mask = File(exists=True, desc="brain mask (outlined)")
    meta = File(exists=True, mandatory=True, desc="run metadata JSON (voxel size, B0)")
    streaking_index = traits.Float(
        desc="the index the derivatives writer computed (NaN: undefined); computed here "
        "when not given"
    )


class ChimapReportlet(ReportletInterface):
    """``desc-chimap`` and ``desc-streaking``: the map with its outlines, and its streaking
    index (:func:`qsm_bids.core.streaking.streaking_index`) against the flag."""

    input_spec = _ChimapInputSpec

    def draw(self, cwd):
        from qsm_bids.core.streaking import streaking_index
        from qsm_bids.report.reportlets import chimap_figure, streaking_figure

        chi = Path(self.inputs.chi)
        local = Path(self.inputs.mask)
        brain = _opt(self.inputs.brain_mask)
        out = [chimap_figure(self.path("chimap"), chi, brain or local, local_mask=local)]
        if isdefined(self.inputs.streaking_index):  # the writer's: no second FFT
            value = float(self.inputs.streaking_index)
        else:
            meta = read_meta(self.inputs.meta)
            value = streaking_index(
                read_volume(chi), read_mask(local), meta["voxel_size"], meta["b0_dir"]
            )
        if np.isfinite(value):
            out.append(streaking_figure(self.path("streaking"), float(value)))
        return out


def reference_region(
    algorithm: str,
    params: dict[str, Any],
    mask: np.ndarray,
    *,
    region: np.ndarray | None = None,
    r2star: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    voxel_size: tuple[float, ...] | None = None,
    fell_back: bool = False,
) -> np.ndarray:
    """The voxels a referencing algorithm took the mean over (for the QC figure).

    Parameters
    ----------
    algorithm : str
        ``"mean"`` (the mask), ``"mask"`` (the user's region inside the mask) or ``"csf"``
        (:func:`qsm_bids.core.reference_csf.detect_csf` with the recipe's parameters).
    params : dict
        The stage's recipe parameters.
    mask : ndarray of bool
        Where the map is defined.
    region, r2star, magnitude, voxel_size : optional
        As given to the referencing.
    fell_back : bool, default False
        The referencing fell back to the whole-mask mean (its note was not empty).

    Returns
    -------
    ndarray of bool
    """
    if fell_back or algorithm == "mean":
        return mask
    if algorithm == "mask":
        if region is None:
            raise ValueError("reference 'mask' without a reference region")
        return np.asarray(region, dtype=bool) & mask
    if algorithm == "csf":
        from qsm_bids import registry
        from qsm_bids.core.reference_csf import detect_csf

        kw = registry.function_kwargs(registry.resolve("reference", "csf", dict(params)))
        accepted = inspect.signature(detect_csf).parameters
        kw = {k: v for k, v in kw.items() if k in accepted}
        return detect_csf(
            mask, r2star=r2star, magnitude=magnitude, region=region, voxel_size=voxel_size, **kw
        )
    raise ValueError(f"no reference-region figure for algorithm {algorithm!r}")


class _ReferenceInputSpec(_ReportletInputSpec):
    chi = File(exists=True, mandatory=True, desc="referenced susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="where chi is defined")
    meta = File(exists=True, mandatory=True, desc="run metadata JSON")
    algorithm = traits.Str(mandatory=True, desc="the referencing algorithm")
    params = traits.Dict(desc="its recipe parameters")
    reference_mask = File(exists=True, desc="the user's reference region")
    r2star = File(exists=True, desc="R2* (1/s), for 'csf'")
    magnitude = File(exists=True, desc="4D magnitude, for 'csf'")
    note = traits.Str(desc="the referencing's fallback note")


class ReferenceReportlet(ReportletInterface):
    """``desc-reference``: the reference region's outline over the referenced map."""

    input_spec = _ReferenceInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import reference_figure

        mask = read_mask(self.inputs.mask)
        meta = read_meta(self.inputs.meta)
        user = read_mask(self.inputs.reference_mask) if _opt(self.inputs.reference_mask) else None
        note = self.inputs.note if isdefined(self.inputs.note) else ""
        region = reference_region(
            self.inputs.algorithm,
            dict(self.inputs.params),
            mask,
            region=user.reshape(mask.shape) if user is not None else None,
            r2star=read_volume(self.inputs.r2star) if _opt(self.inputs.r2star) else None,
            magnitude=read_volume(self.inputs.magnitude) if _opt(self.inputs.magnitude) else None,
            voxel_size=tuple(meta["voxel_size"]),
            fell_back=bool(note),
        )
        path = write_like(region, self.inputs.mask, "reference_region", cwd)
        what = "whole-mask mean" if note else self.inputs.algorithm
        chi = Path(self.inputs.chi)
        title = f"reference region ({what}, {int(region.sum())} voxels)"
        out = reference_figure(
            self.path("reference"), chi, Path(path), mask=Path(self.inputs.mask), title=title
        )
        return [out]


class _R2StarInputSpec(_ReportletInputSpec):
    r2star = File(exists=True, mandatory=True, desc="R2* (1/s)")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class R2StarReportlet(ReportletInterface):
    """``desc-r2star``: the R2* map."""

    input_spec = _R2StarInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import r2star_figure

        return [
            r2star_figure(self.path("r2star"), Path(self.inputs.r2star), Path(self.inputs.mask))
        ]


class _SWIInputSpec(_ReportletInputSpec):
    swi = File(exists=True, mandatory=True, desc="SWI")
    minip = File(exists=True, mandatory=True, desc="minIP of the SWI")
    mask = File(exists=True, desc="brain mask")


class SWIReportlet(ReportletInterface):
    """``desc-swi`` and ``desc-minip``: the SWI and its minimum-intensity projection."""

    input_spec = _SWIInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import swi_figure

        mask = _opt(self.inputs.mask)
        return [
            swi_figure(self.path("swi"), Path(self.inputs.swi), mask, "SWI"),
            swi_figure(self.path("minip"), Path(self.inputs.minip), mask, "SWI minIP"),
        ]


class _RegistrationInputSpec(_ReportletInputSpec):
    chi_template = File(exists=True, mandatory=True, desc="chi in template space (ppm)")


class RegistrationReportlet(ReportletInterface):
    """``desc-registration``: the template's outlines over the map in template space."""

    input_spec = _RegistrationInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import registration_figure

        return [registration_figure(self.path("registration"), Path(self.inputs.chi_template))]


class _LabelsInputSpec(_ReportletInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    labels = File(exists=True, mandatory=True, desc="labels on chi's grid")
    mask = File(exists=True, desc="brain mask (for the cut and crop)")
    desc = traits.Str("atlas", usedefault=True, desc="'atlas' or 'seg<name>'")
    title = traits.Str("atlas labels in subject space", usedefault=True)


class LabelsReportlet(ReportletInterface):
    """``desc-atlas`` / ``desc-seg<name>``: atlas or segmentation labels over the map."""

    input_spec = _LabelsInputSpec

    def draw(self, cwd):
        from qsm_bids.report.reportlets import labels_figure

        out = labels_figure(
            self.path(self.inputs.desc),
            Path(self.inputs.chi),
            Path(self.inputs.labels),
            mask=_opt(self.inputs.mask),
            title=self.inputs.title,
        )
        return [out]


__all__ = [
    "BrainMaskReportlet",
    "ChimapReportlet",
    "EchoFitReportlet",
    "FieldReportlet",
    "LabelsReportlet",
    "R2StarReportlet",
    "ReferenceReportlet",
    "RegistrationReportlet",
    "ReportletInterface",
    "Reportlets",
    "UnwrapReportlet",
    "reference_region",
]
