"""Workflows from raw echoes to the total field: brain mask, the mask the field is fitted on,
unwrapping, echo combination."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.interfaces.reportlets import (
    BrainMaskReportlet,
    EchoFitReportlet,
    Reportlets,
    UnwrapReportlet,
)
from qsm_bids.interfaces.stages import BrainMask, CombineEchoes, UnwrapPhase
from qsm_bids.interfaces.two_pass import FillMaskHoles
from qsm_bids.pipeline.nodes import stage_node
from qsm_bids.recipe import StageChoice


def init_mask_wf(
    choice: StageChoice,
    *,
    mask_file: str | None = None,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    reportlets: Reportlets | None = None,
    name: str = "mask_wf",
) -> pe.Workflow:
    """Brain mask from the magnitude (or the user's mask file).

    Inputs: ``phase`` (4D, rad), ``magnitude`` (4D, optional), ``meta``.
    Outputs: ``mask``. With ``reportlets``: the ``desc-brainmask`` figure.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["phase", "magnitude", "meta"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(["mask"]), name="outputnode")
    node = stage_node(BrainMask, choice, name="brain_mask", mem_gb=mem_gb, n_procs=1)
    if mask_file:
        node.inputs.mask_file = mask_file
    wf.connect([
        (inputnode, node, [("phase", "phase"), ("magnitude", "magnitude"), ("meta", "meta")]),
        (node, outputnode, [("mask", "mask")]),
    ])  # fmt: skip
    if reportlets is not None:
        figure = reportlets.node(BrainMaskReportlet, "brainmask_reportlet")
        wf.connect([
            (inputnode, figure, [("phase", "phase"), ("magnitude", "magnitude")]),
            (node, figure, [("mask", "mask")]),
        ])  # fmt: skip
    return wf


def init_field_mask_wf(
    *, fill_holes: bool = False, mem_gb: float = 0.5, name: str = "field_mask_wf"
) -> pe.Workflow:
    """The mask the field is unwrapped and fitted on (and R2* mapped on).

    For the two-pass inversion (``fill_holes``) it is the brain mask with its holes filled
    (:func:`qsm_bids.core.inversion.two_pass.fill_mask_holes`): the second pass needs the
    total field in them; otherwise the brain mask itself.

    Inputs: ``mask``. Outputs: ``mask``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["mask"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(["mask"]), name="outputnode")
    if not fill_holes:
        wf.connect(inputnode, "mask", outputnode, "mask")
        return wf
    fill = pe.Node(FillMaskHoles(), name="fill_mask_holes", mem_gb=mem_gb)
    wf.connect([
        (inputnode, fill, [("mask", "mask")]),
        (fill, outputnode, [("mask", "mask")]),
    ])  # fmt: skip
    return wf


def init_unwrap_wf(
    choice: StageChoice,
    *,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    reportlets: Reportlets | None = None,
    name: str = "unwrap_wf",
) -> pe.Workflow:
    """Spatial and temporal phase unwrapping of all echoes.

    Inputs: ``phase`` (4D, rad), ``magnitude`` (optional), ``mask``, ``meta``.
    Outputs: ``unwrapped`` (4D, rad). With ``reportlets``: the ``desc-unwrapped`` figure.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["phase", "magnitude", "mask", "meta"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(["unwrapped"]), name="outputnode")
    node = stage_node(UnwrapPhase, choice, name="unwrap", mem_gb=mem_gb, n_procs=n_procs)
    wf.connect([
        (inputnode, node, [("phase", "phase"), ("magnitude", "magnitude"),
                           ("mask", "mask"), ("meta", "meta")]),
        (node, outputnode, [("unwrapped", "unwrapped")]),
    ])  # fmt: skip
    if reportlets is not None:
        figure = reportlets.node(UnwrapReportlet, "unwrapped_reportlet")
        wf.connect([
            (inputnode, figure, [("mask", "mask"), ("meta", "meta")]),
            (node, figure, [("unwrapped", "unwrapped")]),
        ])  # fmt: skip
    return wf


def init_echo_combination_wf(
    choice: StageChoice,
    *,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    reportlets: Reportlets | None = None,
    name: str = "combine_wf",
) -> pe.Workflow:
    """Multi-echo combination into the total field map.

    Inputs: ``unwrapped`` (4D, rad), ``magnitude`` (optional), ``mask``, ``meta``.
    Outputs: ``field`` (Hz), ``noise`` (SD of the field, Hz). With ``reportlets``: the
    ``desc-echofit`` figure (the noise; the total field's figure is drawn as written, after
    the phase-sign check: :func:`~qsm_bids.pipeline.susceptibility.init_estimate_reportlets_wf`).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["unwrapped", "magnitude", "mask", "meta"]), name="inputnode"
    )
    outputnode = pe.Node(IdentityInterface(["field", "noise"]), name="outputnode")
    node = stage_node(CombineEchoes, choice, name="combine", mem_gb=mem_gb, n_procs=n_procs)
    wf.connect([
        (inputnode, node, [("unwrapped", "unwrapped"), ("magnitude", "magnitude"),
                           ("mask", "mask"), ("meta", "meta")]),
        (node, outputnode, [("field", "field"), ("noise", "noise")]),
    ])  # fmt: skip
    if reportlets is not None:
        figure = reportlets.node(EchoFitReportlet, "echofit_reportlet")
        wf.connect([
            (inputnode, figure, [("mask", "mask")]),
            (node, figure, [("noise", "noise")]),
        ])  # fmt: skip
    return wf
