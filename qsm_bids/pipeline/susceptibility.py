"""Workflows from the total field to susceptibility: background removal, dipole inversion,
referencing; and R2*/T2* mapping from the magnitudes."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.interfaces.reportlets import (
    ChimapReportlet,
    FieldReportlet,
    R2StarReportlet,
    ReferenceReportlet,
    Reportlets,
)
from qsm_bids.interfaces.stages import BackgroundRemoval, DipoleInversion, R2Star, Reference
from qsm_bids.interfaces.two_pass import TwoPassCombine
from qsm_bids.pipeline.nodes import ESTIMATE, pass_through, stage_node
from qsm_bids.recipe import StageChoice


def init_background_wf(
    choice: StageChoice, *, mem_gb: float = 1.0, n_procs: int = 1, name: str = "background_wf"
) -> pe.Workflow:
    """Background field removal.

    Inputs: ``field`` (total, Hz), ``noise`` (its SD, Hz; optional), ``mask``, ``meta``;
    optional ``chi`` (ppm) and ``chi_mask``: a susceptibility estimate whose field is removed
    first and added back (a feedback pass, :mod:`qsm_bids.core.background.feedback`), and
    ``previous_local`` (Hz), the local field ``chi`` came from, from which the pass is
    over-relaxed (the stage's ``feedback_relaxation``), and ``first_local`` (Hz), the plain
    pass's local field, with which the pass removes the background of ``chi``'s field alone
    (the linear form). Outputs: ``local_field`` (Hz), ``local_mask``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(
            ["field", "noise", "mask", "meta", "chi", "chi_mask", "previous_local", "first_local"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(IdentityInterface(["local_field", "local_mask"]), name="outputnode")
    node = stage_node(BackgroundRemoval, choice, name="background", mem_gb=mem_gb, n_procs=n_procs)
    wf.connect([
        (inputnode, node, [("field", "field"), ("noise", "noise"), ("mask", "mask"),
                           ("meta", "meta"), ("chi", "chi"), ("chi_mask", "chi_mask"),
                           ("previous_local", "previous_local"),
                           ("first_local", "first_local")]),
        (node, outputnode, [("local_field", "local_field"), ("local_mask", "local_mask")]),
    ])  # fmt: skip
    return wf


def _reference_node(reference: StageChoice, reference_mask: str | None, mem_gb: float):
    """The referencing node (a user's reference region when given)."""
    ref = stage_node(Reference, reference, name="reference", mem_gb=mem_gb, n_procs=1)
    if reference_mask:
        ref.inputs.reference_mask = reference_mask
    return ref


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
    ref = _reference_node(reference, reference_mask, mem_gb / 4)
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


def init_two_pass_wf(
    background: StageChoice,
    inversion: StageChoice,
    reference: StageChoice,
    *,
    enabled: bool = True,
    reference_mask: str | None = None,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    name: str = "two_pass_wf",
) -> pe.Workflow:
    """Second pass of the two-pass inversion for strong sources, and the combination
    (:mod:`qsm_bids.core.inversion.two_pass`).

    The first pass is the pipeline's usual background removal and inversion (with its
    feedback passes) on the brain mask, whose holes (unreliable phase at strong sources,
    e.g. from the ``magnitude_and_quality`` mask) make the sources count as outside ones.
    This pass removes the background and inverts on the mask with its holes filled (no
    feedback pass: its map is used only in the holes), then takes the first pass's map
    where it exists and this pass's in the holes, and references the combination. The
    total field must cover the filled mask (the pipeline unwraps and fits it there).

    Inputs: ``field`` (total, Hz), ``noise``, ``filled_mask``, ``meta``, ``magnitude``,
    ``r2star``; the first pass's estimate (:data:`~qsm_bids.pipeline.nodes.ESTIMATE`:
    ``chi``, ``chi_raw`` (ppm), ``local_field`` (Hz), ``local_mask``,
    ``reference_note``). Outputs: the combined estimate: ``chi`` (ppm, referenced),
    ``chi_raw``, ``local_field``, ``local_mask`` (the union of both passes' masks) and
    ``reference_note``.

    With ``enabled`` False (the recipe's ``two_pass = false``) the workflow passes the
    first pass's estimate through unchanged.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["field", "noise", "filled_mask", "meta", "magnitude", "r2star",
                           *ESTIMATE]),
        name="inputnode",
    )  # fmt: skip
    outputnode = pe.Node(IdentityInterface(list(ESTIMATE)), name="outputnode")
    if not enabled:
        wf.connect([(inputnode, outputnode, pass_through(*ESTIMATE))])
        return wf
    bg = init_background_wf(background, mem_gb=mem_gb, n_procs=n_procs, name="background_wf")
    inv = init_inversion_wf(
        inversion, reference, reference_mask=reference_mask, mem_gb=mem_gb, n_procs=n_procs
    )
    combine = pe.Node(TwoPassCombine(), name="combine", mem_gb=mem_gb / 4)
    ref = _reference_node(reference, reference_mask, mem_gb / 4)
    wf.connect([
        (inputnode, bg, [("field", "inputnode.field"), ("noise", "inputnode.noise"),
                         ("meta", "inputnode.meta"), ("filled_mask", "inputnode.mask")]),
        (inputnode, inv, [("meta", "inputnode.meta"), ("noise", "inputnode.noise"),
                          ("magnitude", "inputnode.magnitude")]),
        (bg, inv, [("outputnode.local_field", "inputnode.local_field"),
                   ("outputnode.local_mask", "inputnode.local_mask")]),
        (inputnode, combine, [("chi_raw", "chi_reliable"), ("local_mask", "reliable_mask"),
                              ("local_field", "local_reliable")]),
        (inv, combine, [("outputnode.chi_raw", "chi_filled")]),
        (bg, combine, [("outputnode.local_mask", "filled_mask"),
                       ("outputnode.local_field", "local_filled")]),
        (combine, ref, [("chi", "chi"), ("mask", "mask")]),
        (inputnode, ref, [("meta", "meta"), ("r2star", "r2star"), ("magnitude", "magnitude")]),
        (combine, outputnode, [("chi", "chi_raw"), ("local_field", "local_field"),
                               ("mask", "local_mask")]),
        (ref, outputnode, [("chi", "chi"), ("note", "reference_note")]),
    ])  # fmt: skip
    return wf


def init_estimate_reportlets_wf(
    reportlets: Reportlets,
    reference: StageChoice,
    *,
    reference_mask: str | None = None,
    name: str = "estimate_reportlets_wf",
) -> pe.Workflow:
    """The figures of the maps as written, after the phase-sign check: ``desc-totalfield``,
    ``desc-localfield``, ``desc-chimap`` (with the brain and background-removal outlines),
    ``desc-streaking`` (the map's streaking index against the flag) and ``desc-reference``
    (the referencing region over the map).

    The check is downstream of every stage and may negate the field maps and the map, so
    these figures cannot be drawn inside the stage builders (a cycle) and take its sign.

    Inputs: ``chi`` (ppm, sign-checked), ``sign`` (the check's -1/1), ``total_field`` and
    ``local_field`` (Hz, before the check), ``local_mask`` (where the map is defined),
    ``brain_mask``, ``meta``, ``reference_note`` (the referencing's fallback note), and for
    CSF referencing ``r2star`` and ``magnitude``. No outputs: the nodes write the figures.

    Parameters
    ----------
    reportlets : Reportlets
        Where the run's figures go.
    reference : StageChoice
        The referencing stage (its algorithm and parameters give the region).
    reference_mask : str or None, default None
        The user's reference region (``--reference-mask``).
    name : str, default "estimate_reportlets_wf"
        Workflow name.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["chi", "sign", "total_field", "local_field", "local_mask",
                           "brain_mask", "meta", "reference_note", "r2star", "magnitude",
                           "streaking_index"]),
        name="inputnode",
    )  # fmt: skip
    total = reportlets.node(FieldReportlet, "totalfield_reportlet", which="total")
    local = reportlets.node(FieldReportlet, "localfield_reportlet", which="local")
    chimap = reportlets.node(ChimapReportlet, "chimap_reportlet")
    region = reportlets.node(
        ReferenceReportlet,
        "reference_reportlet",
        algorithm=reference.algorithm,
        params=dict(reference.params),
    )
    if reference_mask:
        region.inputs.reference_mask = reference_mask
    wf.connect([
        (inputnode, total, [("total_field", "field"), ("brain_mask", "mask"), ("sign", "sign")]),
        (inputnode, local, [("local_field", "field"), ("brain_mask", "mask"),
                            ("local_mask", "local_mask"), ("sign", "sign")]),
        (inputnode, chimap, [("chi", "chi"), ("local_mask", "mask"),
                             ("brain_mask", "brain_mask"), ("meta", "meta"),
                             ("streaking_index", "streaking_index")]),
        (inputnode, region, [("chi", "chi"), ("local_mask", "mask"), ("meta", "meta"),
                             ("reference_note", "note"), ("r2star", "r2star"),
                             ("magnitude", "magnitude")]),
    ])  # fmt: skip
    return wf


def init_r2star_wf(
    choice: StageChoice,
    *,
    mem_gb: float = 1.0,
    reportlets: Reportlets | None = None,
    name: str = "r2star_wf",
) -> pe.Workflow:
    """R2* (1/s) and T2* (s) maps from the echo magnitudes.

    Inputs: ``magnitude`` (4D), ``mask``, ``meta``.
    Outputs: ``r2star``, ``t2star``. With ``reportlets``: the ``desc-r2star`` figure.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["magnitude", "mask", "meta"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(["r2star", "t2star"]), name="outputnode")
    node = stage_node(R2Star, choice, name="r2star", mem_gb=mem_gb, n_procs=1)
    wf.connect([
        (inputnode, node, [("magnitude", "magnitude"), ("mask", "mask"), ("meta", "meta")]),
        (node, outputnode, [("r2star", "r2star"), ("t2star", "t2star")]),
    ])  # fmt: skip
    if reportlets is not None:
        figure = reportlets.node(R2StarReportlet, "r2star_reportlet")
        wf.connect([
            (inputnode, figure, [("mask", "mask")]),
            (node, figure, [("r2star", "r2star")]),
        ])  # fmt: skip
    return wf
