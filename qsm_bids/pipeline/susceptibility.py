"""Workflows from the total field to susceptibility: background removal, dipole inversion,
referencing; and R2*/T2* mapping from the magnitudes."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.interfaces.stages import BackgroundRemoval, DipoleInversion, R2Star, Reference
from qsm_bids.pipeline.field import stage_node
from qsm_bids.recipe import StageChoice


def init_background_wf(
    choice: StageChoice, *, mem_gb: float = 1.0, n_procs: int = 1, name: str = "background_wf"
) -> pe.Workflow:
    """Background field removal.

    Inputs: ``field`` (total, Hz), ``noise`` (its SD, Hz; optional), ``mask``, ``meta``;
    optional ``chi`` (ppm) and ``chi_mask``: a susceptibility estimate whose field is removed
    first and added back (a feedback pass, :mod:`qsm_bids.core.background.feedback`).
    Outputs: ``local_field`` (Hz), ``local_mask``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["field", "noise", "mask", "meta", "chi", "chi_mask"]), name="inputnode"
    )
    outputnode = pe.Node(IdentityInterface(["local_field", "local_mask"]), name="outputnode")
    node = stage_node(BackgroundRemoval, choice, name="background", mem_gb=mem_gb, n_procs=n_procs)
    wf.connect([
        (inputnode, node, [("field", "field"), ("noise", "noise"), ("mask", "mask"),
                           ("meta", "meta"), ("chi", "chi"), ("chi_mask", "chi_mask")]),
        (node, outputnode, [("local_field", "local_field"), ("local_mask", "local_mask")]),
    ])  # fmt: skip
    return wf


def init_inversion_wf(
    inversion: StageChoice,
    reference: StageChoice,
    *,
    reference_mask: str | None = None,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    name: str = "inversion_wf",
) -> pe.Workflow:
    """Dipole inversion followed by referencing.

    Inputs: ``local_field`` (Hz), ``local_mask``, ``meta``; optional ``noise`` (SD of the
    field, Hz), ``magnitude`` (4D) and ``r2star`` (1/s), given to the algorithms that use
    them. Outputs: ``chi`` (ppm, referenced), ``chi_raw``
    (before referencing), ``reference_note`` (non-empty when the chosen referencing fell
    back to the whole brain).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["local_field", "local_mask", "meta", "noise", "magnitude", "r2star"]),
        name="inputnode",
    )
    outputnode = pe.Node(IdentityInterface(["chi", "chi_raw", "reference_note"]), name="outputnode")
    invert = stage_node(DipoleInversion, inversion, name="invert", mem_gb=mem_gb, n_procs=n_procs)
    ref = stage_node(Reference, reference, name="reference", mem_gb=mem_gb / 4, n_procs=1)
    if reference_mask:
        ref.inputs.reference_mask = reference_mask
    wf.connect([
        (inputnode, invert, [("local_field", "local_field"), ("local_mask", "mask"),
                             ("meta", "meta"), ("noise", "noise"), ("magnitude", "magnitude")]),
        (inputnode, ref, [("local_mask", "mask"), ("meta", "meta"), ("r2star", "r2star"),
                          ("magnitude", "magnitude")]),
        (invert, ref, [("chi", "chi")]),
        (invert, outputnode, [("chi", "chi_raw")]),
        (ref, outputnode, [("chi", "chi"), ("note", "reference_note")]),
    ])  # fmt: skip
    return wf


def init_r2star_wf(
    choice: StageChoice, *, mem_gb: float = 1.0, name: str = "r2star_wf"
) -> pe.Workflow:
    """R2* (1/s) and T2* (s) maps from the echo magnitudes.

    Inputs: ``magnitude`` (4D), ``mask``, ``meta``.
    Outputs: ``r2star``, ``t2star``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["magnitude", "mask", "meta"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(["r2star", "t2star"]), name="outputnode")
    node = stage_node(R2Star, choice, name="r2star", mem_gb=mem_gb, n_procs=1)
    wf.connect([
        (inputnode, node, [("magnitude", "magnitude"), ("mask", "mask"), ("meta", "meta")]),
        (node, outputnode, [("r2star", "r2star"), ("t2star", "t2star")]),
    ])  # fmt: skip
    return wf
