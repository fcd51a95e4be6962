"""Small helpers every workflow builder uses: the node that runs a recipe stage, and the
connection lists between sub-workflows."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from qsm_bids.recipe import StageChoice

#: The fields of a susceptibility estimate handed from one pass to the next (first pass ->
#: feedback passes -> two-pass -> outputs): ``chi`` (ppm, referenced), ``chi_raw`` (ppm,
#: before referencing), ``local_field`` (Hz), ``local_mask`` (where chi is defined) and
#: ``reference_note`` (non-empty when the referencing fell back to the whole brain).
ESTIMATE = ("chi", "chi_raw", "local_field", "local_mask", "reference_note")


def stage_node(
    interface, choice: StageChoice, *, name: str, mem_gb: float, n_procs: int
) -> pe.Node:
    """A nipype node running ``interface`` with the recipe's algorithm and parameters.

    Parameters
    ----------
    interface : type
        A stage interface of :mod:`qsm_bids.interfaces.stages` (takes ``algorithm``,
        ``params`` and ``num_threads``).
    choice : StageChoice
        The recipe's algorithm and parameters for the stage.
    name : str
        Node name.
    mem_gb : float
        The node's memory estimate (GB), for the scheduler.
    n_procs : int
        Threads of the node (its FFTs), for the algorithm and the scheduler.
    """
    return pe.Node(
        interface(algorithm=choice.algorithm, params=dict(choice.params), num_threads=n_procs),
        name=name,
        mem_gb=mem_gb,
        n_procs=n_procs,
    )


def relay(*fields: str) -> list[tuple[str, str]]:
    """Connections of same-named fields from a sub-workflow's ``outputnode`` to another's
    ``inputnode``, for :meth:`nipype.pipeline.engine.Workflow.connect`.

    A new list on every call: nipype keeps the list given to ``connect`` as the edge's data
    and extends it in place, so one list must never serve two connections."""
    return [(f"outputnode.{f}", f"inputnode.{f}") for f in fields]


def feed(*fields: str) -> list[tuple[str, str]]:
    """Connections of same-named fields from a node's outputs to a sub-workflow's
    ``inputnode`` (a new list on every call, as :func:`relay`)."""
    return [(f, f"inputnode.{f}") for f in fields]


def pass_through(*fields: str) -> list[tuple[str, str]]:
    """Connections of same-named fields between two nodes, e.g. an ``inputnode`` straight
    to an ``outputnode`` where a step is off (a new list on every call, as :func:`relay`)."""
    return [(f, f) for f in fields]
