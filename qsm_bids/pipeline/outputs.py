"""The end of a run's workflow: the phase-sign check and the derivatives writer.

The data flow::

    chi, local mask -> phase_sign (negate if the convention is reversed) -> chi
    chi, sign, maps, masks, notes -> derivatives (BIDS files and sidecars)
"""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from qsm_bids.bids.layout import Run
from qsm_bids.interfaces.derivatives import WriteDerivatives
from qsm_bids.interfaces.load import run_to_json
from qsm_bids.interfaces.sign import CheckPhaseSign
from qsm_bids.pipeline.nodes import pass_through

#: the maps and notes written (see :data:`qsm_bids.interfaces.derivatives.OUTPUTS`)
WRITTEN = ("mask", "local_mask", "total_field", "local_field", "r2star", "t2star",
           "reference_note")  # fmt: skip


def init_outputs_wf(
    run: Run,
    *,
    output_dir: Path,
    bids_dir: Path,
    provenance: dict,
    phase_sign: str = "auto",
    run_hash: str = "",
    vol_gb: float = 0.01,
    name: str = "outputs_wf",
) -> pe.Workflow:
    """Check the map's sign and write the run's derivatives.

    Parameters
    ----------
    run : Run
        The run whose derivatives are written.
    output_dir, bids_dir : Path
        Derivatives root and raw dataset root (for ``Sources``).
    provenance : dict
        Recipe provenance (``Recipe.provenance()``), recorded in the sidecars.
    phase_sign : {"auto", "1", "-1"}, default "auto"
        Mode of the phase-sign check (:class:`qsm_bids.interfaces.sign.CheckPhaseSign`):
        "auto" negates the outputs if the map's strong tail is diamagnetic; the check is
        reported in the sidecars in every mode.
    run_hash : str, default ""
        Provenance hash written as ``RunHash`` into every sidecar when non-empty.
    vol_gb : float, default 0.01
        Size of one float32 volume of the run (GB), for the nodes' memory estimates.
    name : str, default "outputs_wf"
        Workflow name.

    Inputs: ``meta``, ``chi`` (ppm, before the sign check), :data:`WRITTEN` (``r2star``
    and ``t2star`` optional). Outputs: ``chi`` (ppm, sign-checked: what the regional
    statistics use), ``sign`` (+1 or -1: what the check applied; the field figures follow it)
    ``streaking_index`` (the Chimap's, as in its sidecar) and ``out_files`` (the derivatives
    written).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(["meta", "chi", *WRITTEN]), name="inputnode")
    outputnode = pe.Node(
        IdentityInterface(["chi", "sign", "streaking_index", "out_files"]), name="outputnode"
    )
    sign = pe.Node(CheckPhaseSign(mode=phase_sign), name="phase_sign", mem_gb=2 * vol_gb + 0.1)
    write = pe.Node(
        WriteDerivatives(
            run_json=run_to_json(run),
            output_dir=str(output_dir),
            bids_dir=str(bids_dir),
            provenance=json.dumps(provenance),
            run_hash=run_hash,
        ),
        name="derivatives",
        mem_gb=6 * vol_gb + 0.2,  # the Chimap's streaking index: one FFT of the padded box
        run_without_submitting=True,
        overwrite=True,  # always (re)write: cheap, and restores deleted outputs on rerun
    )
    wf.connect([
        (inputnode, sign, [("chi", "chi"), ("local_mask", "mask")]),
        (inputnode, write, pass_through("meta", *WRITTEN)),
        (sign, write, [("chi", "chi"), ("sign", "sign"), ("report", "sign_check")]),
        (sign, outputnode, [("chi", "chi"), ("sign", "sign")]),
        (write, outputnode, [("out_files", "out_files"), ("streaking_index", "streaking_index")]),
    ])  # fmt: skip
    return wf
