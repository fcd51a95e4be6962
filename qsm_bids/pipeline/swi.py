"""SWI and minIP of a multi-echo run (CLEAR-SWI style; :mod:`qsm_bids.core.swi`).

magnitude (4D), local field (Hz), sign, local mask -> SWI, minIP (derivatives) -> figures
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.bids.layout import Run
from qsm_bids.interfaces.load import run_to_json
from qsm_bids.interfaces.reportlets import Reportlets, SWIReportlet
from qsm_bids.interfaces.swi import SWI

#: Defaults: phase-mask power (classic SWI, CLEAR-SWI's strength 4) and minIP slab (mm).
SWI_POWER = 4.0
MINIP_SLAB_MM = 8.0


def init_swi_wf(
    run: Run,
    *,
    output_dir: Path,
    bids_dir: Path,
    reportlets: Reportlets | None = None,
    run_hash: str = "",
    power: float = SWI_POWER,
    slab_mm: float = MINIP_SLAB_MM,
    vol_gb: float = 0.1,
    name: str = "swi_wf",
) -> pe.Workflow:
    """SWI and its minimum-intensity projection, written to the derivatives.

    Inputs: ``magnitude`` (4D), ``local_field`` (Hz, before the phase-sign check), ``sign``
    (the check's -1/1), ``local_mask`` (where the field is defined), ``brain_mask`` (the
    figure's outline), ``meta``. Outputs: ``swi``, ``minip`` (the files written).

    Parameters
    ----------
    run : Run
        The run (its magnitude images and >= 2 echoes).
    output_dir, bids_dir : Path
        Derivatives root and raw BIDS root (for the sidecars' Sources).
    reportlets : Reportlets or None
        Where the figures go; None: no figures.
    run_hash : str, default ""
        RunHash of the sidecars.
    power : float, default 4
        Phase-mask exponent.
    slab_mm : float, default 8
        minIP slab thickness (mm) along the voxel axis closest to B0.
    vol_gb : float, default 0.1
        Size of one 3D float64 volume (GB), for the memory estimate.
    name : str, default "swi_wf"
        Workflow name.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        IdentityInterface(["magnitude", "local_field", "sign", "local_mask", "brain_mask",
                           "meta"]),
        name="inputnode",
    )  # fmt: skip
    outputnode = pe.Node(IdentityInterface(["swi", "minip"]), name="outputnode")
    node = pe.Node(
        SWI(
            run_json=run_to_json(run),
            output_dir=str(output_dir),
            bids_dir=str(bids_dir),
            run_hash=run_hash,
            power=power,
            slab_mm=slab_mm,
        ),
        name="swi",
        mem_gb=(len(run.magnitude_files) + 6) * vol_gb + 0.2,
        overwrite=True,  # cheap; restores deleted outputs on rerun
    )
    wf.connect([
        (inputnode, node, [("magnitude", "magnitude"), ("local_field", "local_field"),
                           ("sign", "sign"), ("local_mask", "mask"), ("meta", "meta")]),
        (node, outputnode, [("swi", "swi"), ("minip", "minip")]),
    ])  # fmt: skip
    if reportlets is not None:
        fig = reportlets.node(SWIReportlet, "swi_reportlet")
        wf.connect([
            (node, fig, [("swi", "swi"), ("minip", "minip")]),
            (inputnode, fig, [("brain_mask", "mask")]),
        ])  # fmt: skip
    return wf
