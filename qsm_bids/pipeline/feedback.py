"""Background removal with susceptibility feedback (:mod:`qsm_bids.core.background.feedback`).

The first pass (the pipeline's plain background removal and inversion) misses the part of
the local field that the background removal takes for background: the field of sources
near the brain's edge. Each feedback pass reruns the background stage on the total field
minus the field of the latest map (adding that field back after), over-relaxed from the
local field the map came from, and inverts again; the last pass's map is the result. A
final pass, not relaxed, gives the local field consistent with that map (the one
written), since the relaxed field the map came from overshoots::

    first pass (local field, mask, map) -> background_feedback1 -> inversion_feedback1
        -> background_feedback2 -> inversion_feedback2 -> ... -> map
    map, last pass's mask -> background_consistent -> local field

Every pass uses the linear form of background removal: the plain pass's local field,
minus the background removal of the map's field alone, plus that field (the same as
removing the background of the total field minus the map's field, without the total
field's background again), so passes differ only in the map they start from.
"""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids import registry
from qsm_bids.pipeline.nodes import ESTIMATE, pass_through
from qsm_bids.pipeline.susceptibility import init_background_wf, init_inversion_wf
from qsm_bids.recipe import StageChoice

#: what every pass takes from the run: ``meta``, ``magnitude`` (4D), ``mask`` (the brain
#: mask), ``field`` (total, Hz), ``noise`` (its SD, Hz) and ``r2star`` (1/s, optional)
CONTEXT = ("meta", "magnitude", "mask", "field", "noise", "r2star")


def feedback_passes(background: StageChoice) -> int:
    """The number of feedback passes the background stage asks for (``dipole_feedback``)."""
    return int(background.params.get(registry.FEEDBACK, 0))


def first_pass_inversion(inversion: StageChoice, background: StageChoice) -> StageChoice:
    """The first pass's inversion: with feedback passes its map only feeds the first of
    them, and may be cheaper (``preliminary_max_iter``); without, it is the result."""
    if feedback_passes(background):
        return inversion.with_max_iter_from(registry.PRELIMINARY_MAX_ITER)
    return inversion


def init_feedback_wf(
    background: StageChoice,
    inversion: StageChoice,
    reference: StageChoice,
    *,
    reference_mask: str | None = None,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    name: str = "feedback_wf",
) -> pe.Workflow:
    """The feedback passes after the first pass (see the module docstring).

    Parameters
    ----------
    background, inversion, reference : StageChoice
        The recipe's stages; ``background`` sets the number of passes
        (:func:`feedback_passes`, none: the first pass's estimate passes through), their
        ``feedback_relaxation`` and their iteration count (``feedback_max_iter``).
    reference_mask : str or None, default None
        A user reference region for the referencing.
    mem_gb : float, default 1.0
        Memory estimate of each background and inversion node (GB).
    n_procs : int, default 1
        Threads of each background and inversion node.
    name : str, default "feedback_wf"
        Workflow name.

    Inputs: :data:`CONTEXT` and the first pass's estimate
    (:data:`~qsm_bids.pipeline.nodes.ESTIMATE`: ``chi``, ``chi_raw`` (ppm), ``local_field``
    (Hz), ``local_mask``, ``reference_note``). Outputs: the final estimate: the last
    inversion's ``chi``, ``chi_raw`` and ``reference_note``, the last pass's
    ``local_mask``, and the consistent pass's ``local_field``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface([*CONTEXT, *ESTIMATE]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(list(ESTIMATE)), name="outputnode")
    passes = feedback_passes(background)
    if not passes:
        wf.connect([(inputnode, outputnode, pass_through(*ESTIMATE))])
        return wf
    linear = background.with_max_iter_from(registry.FEEDBACK_MAX_ITER)
    kwargs = {"mem_gb": mem_gb, "n_procs": n_procs}
    backgrounds = [
        init_background_wf(linear, name=f"background_feedback{i}_wf", **kwargs)
        for i in range(1, passes + 1)
    ]
    inversions = [
        init_inversion_wf(inversion, reference, reference_mask=reference_mask,
                          name=f"inversion_feedback{i}_wf", **kwargs)
        for i in range(1, passes + 1)
    ]  # fmt: skip
    consistent = init_background_wf(linear, name="background_consistent_wf", **kwargs)
    # every background pass: the run's total field and brain mask, and the linear form
    for bg in (*backgrounds, consistent):
        wf.connect([
            (inputnode, bg, [("meta", "inputnode.meta"), ("mask", "inputnode.mask"),
                             ("field", "inputnode.field"), ("noise", "inputnode.noise"),
                             ("local_field", "inputnode.first_local")]),
        ])  # fmt: skip
    # every inversion: the run's data, and the local field and mask of its pass
    for bg, inv in zip(backgrounds, inversions, strict=True):
        wf.connect([
            (inputnode, inv, [("meta", "inputnode.meta"), ("magnitude", "inputnode.magnitude"),
                              ("noise", "inputnode.noise"), ("r2star", "inputnode.r2star")]),
            (bg, inv, [("outputnode.local_field", "inputnode.local_field"),
                       ("outputnode.local_mask", "inputnode.local_mask")]),
        ])  # fmt: skip
    # pass i starts from the map of pass i - 1 (the first pass's for i = 1), on that
    # pass's mask, over-relaxed from that pass's local field
    wf.connect([
        (inputnode, backgrounds[0], [("chi_raw", "inputnode.chi"),
                                     ("local_mask", "inputnode.chi_mask"),
                                     ("local_field", "inputnode.previous_local")]),
    ])  # fmt: skip
    for i in range(1, passes):
        wf.connect([
            (inversions[i - 1], backgrounds[i], [("outputnode.chi_raw", "inputnode.chi")]),
            (backgrounds[i - 1], backgrounds[i], [
                ("outputnode.local_mask", "inputnode.chi_mask"),
                ("outputnode.local_field", "inputnode.previous_local")]),
        ])  # fmt: skip
    # the consistent pass: the final map on its pass's mask, not relaxed
    wf.connect([
        (inversions[-1], consistent, [("outputnode.chi_raw", "inputnode.chi")]),
        (backgrounds[-1], consistent, [("outputnode.local_mask", "inputnode.chi_mask")]),
        (inversions[-1], outputnode, [("outputnode.chi", "chi"), ("outputnode.chi_raw", "chi_raw"),
                                      ("outputnode.reference_note", "reference_note")]),
        (backgrounds[-1], outputnode, [("outputnode.local_mask", "local_mask")]),
        (consistent, outputnode, [("outputnode.local_field", "local_field")]),
    ])  # fmt: skip
    return wf
