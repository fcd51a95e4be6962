"""Top-level workflows: one QSM workflow per BIDS run, and the participant-level workflow.

The data flow, one node per arrow::

    load -> mask -> unwrap -> combine (total field, Hz) -> background (local field, Hz)
         -> inversion (ppm) -> reference -> derivatives
    load, mask -> r2star (R2*, T2*) -> derivatives
    load (magnitude), chi -> registration to MNI152NLin2009aSym, AAL3 into the subject,
         regional statistics -> derivatives
    chi, user segmentation -> regional statistics -> derivatives   (--segmentation)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import nibabel as nb
from nipype.pipeline import engine as pe

from qsm_bids import registry
from qsm_bids.bids.layout import Run
from qsm_bids.bids.segmentation import Segmentation
from qsm_bids.config import Config
from qsm_bids.interfaces.derivatives import WriteDerivatives
from qsm_bids.interfaces.load import LoadRun, run_to_json
from qsm_bids.interfaces.sign import CheckPhaseSign
from qsm_bids.interfaces.two_pass import FillMaskHoles
from qsm_bids.pipeline.field import init_echo_combination_wf, init_mask_wf, init_unwrap_wf
from qsm_bids.pipeline.registration import init_registration_wf, init_segmentation_wf
from qsm_bids.pipeline.susceptibility import (
    init_background_wf,
    init_inversion_wf,
    init_r2star_wf,
    init_two_pass_wf,
)
from qsm_bids.recipe import Recipe, StageChoice
from qsm_bids.registry import resolve


def estimate_volume_gb(run: Run) -> tuple[float, float]:
    """Size in GB of one float32 3D volume and of the 4D echo stack of ``run``."""
    shape = nb.load(str(run.phase_files[0])).shape
    n3 = 1
    for n in shape[:3]:
        n3 *= int(n)
    vol = n3 * 4 / 1024**3
    return vol, vol * len(run.phase_files)


def workflow_name(run: Run) -> str:
    """A nipype-safe workflow name for a run (letters, digits and underscores)."""
    return "qsm_" + re.sub(r"[^0-9a-zA-Z]", "_", run.name)


def phase_only_recipe(recipe: Recipe) -> Recipe:
    """The recipe with its magnitude-based mask replaced by the phase-quality mask (with
    its defaults), for runs that have no magnitude images."""
    choice = StageChoice("mask", "phase_quality", resolve("mask", "phase_quality", {}))
    return replace(recipe, stages={**recipe.stages, "mask": choice})


def init_qsm_wf(
    run: Run,
    config: Config,
    *,
    recipe: Recipe | None = None,
    mask_file: str | None = None,
    segmentation: Segmentation | None = None,
    run_hash: str = "",
    omp_nthreads: int = 1,
    name: str | None = None,
) -> pe.Workflow:
    """The full QSM workflow for one run (subject, session, acquisition, run).

    Parameters
    ----------
    run : Run
        The run's files and metadata (from :func:`qsm_bids.bids.layout.find_runs`).
    config : Config
        The run's settings (:mod:`qsm_bids.config`): the derivatives, raw dataset and work
        folders from ``config.execution``; ``reference_mask``, ``phase_sign`` and
        ``registration`` from ``config.workflow``:

        - ``phase_sign`` ``"-1"`` negates the phase on reading (scanners with the opposite
          convention); ``"auto"`` keeps it and negates the outputs if the map's strong tail
          is diamagnetic (:func:`qsm_bids.core.sign.check_phase_sign`); where the evidence
          is weak the check abstains and the sign is kept, with a warning. The check is
          reported in the sidecars in every mode.
        - ``registration`` registers the magnitude to the MNI152NLin2009aSym template,
          brings the AAL3 atlas into the subject and writes regional statistics (runs with
          magnitude images only).
    recipe : Recipe or None, default None
        Algorithm and parameters per stage; default ``config.recipe``.
    mask_file : str or None, default None
        A user brain mask replacing the mask stage.
    segmentation : Segmentation or None, default None
        A user segmentation in the subject's space (``--segmentation``, checked with
        :func:`qsm_bids.bids.segmentation.check_segmentation`): its regional statistics
        are written too, with or without registration.
    run_hash : str, default ""
        A provenance hash of what produced this run's outputs (inputs, recipe, version),
        written as ``RunHash`` into every sidecar when non-empty.
    omp_nthreads : int, default 1
        Threads given to each FFT-heavy node.
    name : str or None, default None
        Workflow name; default :func:`workflow_name`.
    """
    recipe = recipe or config.recipe
    output_dir = Path(config.execution.output_dir).resolve()
    bids_dir = Path(config.execution.bids_dir).resolve()
    reference_mask = _resolved(config.workflow.reference_mask)
    phase_sign = config.workflow.phase_sign
    registration = config.workflow.registration
    n_procs = max(1, int(omp_nthreads))
    vol, vol4 = estimate_volume_gb(run)
    if mask_file:
        user = StageChoice("mask", "user_mask", {"mask_file": str(mask_file)})
        recipe = replace(recipe, stages={**recipe.stages, "mask": user})
    elif not run.magnitude_files and recipe["mask"].algorithm == "magnitude":
        recipe = phase_only_recipe(recipe)
    wf = pe.Workflow(name=name or workflow_name(run))
    load = pe.Node(
        LoadRun(
            run_json=run_to_json(run),
            in_files=[str(p) for p in (*run.phase_files, *run.magnitude_files)],
            phase_sign=-1 if phase_sign == "-1" else 1,
        ),
        name="load",
        mem_gb=3 * vol4 + 0.2,
    )
    mask_wf = init_mask_wf(recipe["mask"], mask_file=mask_file, mem_gb=2 * vol4 + 0.2)
    unwrap_wf = init_unwrap_wf(recipe["unwrap"], mem_gb=4 * vol4 + 0.3, n_procs=n_procs)
    combine_wf = init_echo_combination_wf(recipe["combine"], mem_gb=4 * vol4 + 0.2)
    background_wf = init_background_wf(recipe["background"], mem_gb=30 * vol + 0.3, n_procs=n_procs)
    # background removal with susceptibility feedback: rerun the background stage on the total
    # field minus the field of the latest map, then invert again (the last pair is used); the
    # first map then only feeds the first feedback pass, and may be cheaper
    feedback = int(recipe["background"].params.get(registry.FEEDBACK, 0))
    inversion_wf = init_inversion_wf(
        recipe["inversion"].with_max_iter_from(registry.PRELIMINARY_MAX_ITER)
        if feedback
        else recipe["inversion"],
        recipe["reference"],
        reference_mask=reference_mask,
        mem_gb=30 * vol + 0.3,
        n_procs=n_procs,
    )
    # two-pass inversion: the field is unwrapped and fitted on the mask with its holes
    # filled (the second pass needs it there); the first pass runs on the mask itself
    two_pass = bool(recipe["inversion"].params.get(registry.TWO_PASS, False))
    field_mask = (mask_wf, "outputnode.mask")
    if two_pass:
        fill = pe.Node(FillMaskHoles(), name="fill_mask_holes", mem_gb=vol + 0.1)
        wf.connect(mask_wf, "outputnode.mask", fill, "mask")
        field_mask = (fill, "mask")
    stages = [(background_wf, inversion_wf)]

    def feedback_background(name: str, prev_bg, prev_inv, relaxed: bool) -> pe.Workflow:
        """A feedback pass (linear form) on the map of ``prev_inv``, whose local field and
        mask came from ``prev_bg``; over-relaxed from that field when ``relaxed``."""
        node = init_background_wf(
            recipe["background"].with_max_iter_from(registry.FEEDBACK_MAX_ITER),
            mem_gb=30 * vol + 0.3, n_procs=n_procs, name=name,
        )  # fmt: skip
        wf.connect([
            (load, node, [("meta", "inputnode.meta")]),
            (mask_wf, node, [("outputnode.mask", "inputnode.mask")]),
            (combine_wf, node, [("outputnode.field", "inputnode.field"),
                                ("outputnode.noise", "inputnode.noise")]),
            (background_wf, node, [("outputnode.local_field", "inputnode.first_local")]),
            (prev_inv, node, [("outputnode.chi_raw", "inputnode.chi")]),
            (prev_bg, node, [("outputnode.local_mask", "inputnode.chi_mask")]),
        ])  # fmt: skip
        if relaxed:
            wf.connect(prev_bg, "outputnode.local_field", node, "inputnode.previous_local")
        return node

    for i in range(1, feedback + 1):
        bg_i = feedback_background(f"background_feedback{i}_wf", *stages[-1], relaxed=True)
        inv_i = init_inversion_wf(
            recipe["inversion"], recipe["reference"], reference_mask=reference_mask,
            mem_gb=30 * vol + 0.3, n_procs=n_procs, name=f"inversion_feedback{i}_wf",
        )  # fmt: skip
        wf.connect([
            (load, inv_i, [("meta", "inputnode.meta"), ("magnitude", "inputnode.magnitude")]),
            (combine_wf, inv_i, [("outputnode.noise", "inputnode.noise")]),
            (bg_i, inv_i, [("outputnode.local_field", "inputnode.local_field"),
                           ("outputnode.local_mask", "inputnode.local_mask")]),
        ])  # fmt: skip
        stages.append((bg_i, inv_i))
    last_bg, last_inv = stages[-1]
    # what the outputs come from: the last pass, or the two-pass combination
    final_local = (last_bg, "outputnode.local_field")
    if feedback:
        # the local field written is the one consistent with the final map: the plain pass
        # plus the part of the map's field that the background removal takes (one more
        # linear pass, not relaxed); the relaxed field the map came from overshoots
        consistent = feedback_background("background_consistent_wf", *stages[-1], relaxed=False)
        final_local = (consistent, "outputnode.local_field")
    final_mask = (last_bg, "outputnode.local_mask")
    final_chi = (last_inv, "outputnode.chi")
    final_note = (last_inv, "outputnode.reference_note")
    two_pass_wf = None
    if two_pass:
        two_pass_wf = init_two_pass_wf(
            recipe["background"], recipe["inversion"], recipe["reference"],
            reference_mask=reference_mask, mem_gb=30 * vol + 0.3, n_procs=n_procs,
        )  # fmt: skip
        wf.connect([
            (load, two_pass_wf, [("meta", "inputnode.meta"),
                                 ("magnitude", "inputnode.magnitude")]),
            (field_mask[0], two_pass_wf, [(field_mask[1], "inputnode.filled_mask")]),
            (combine_wf, two_pass_wf, [("outputnode.field", "inputnode.field"),
                                       ("outputnode.noise", "inputnode.noise")]),
            (final_local[0], two_pass_wf, [(final_local[1], "inputnode.local_field")]),
            (last_bg, two_pass_wf, [("outputnode.local_mask", "inputnode.local_mask")]),
            (last_inv, two_pass_wf, [("outputnode.chi_raw", "inputnode.chi_raw")]),
        ])  # fmt: skip
        final_local = (two_pass_wf, "outputnode.local_field")
        final_mask = (two_pass_wf, "outputnode.local_mask")
        final_chi = (two_pass_wf, "outputnode.chi")
        final_note = (two_pass_wf, "outputnode.reference_note")
    sign = pe.Node(CheckPhaseSign(mode=phase_sign), name="phase_sign", mem_gb=2 * vol + 0.1)
    write = pe.Node(
        WriteDerivatives(
            run_json=run_to_json(run),
            output_dir=str(output_dir),
            bids_dir=str(bids_dir),
            provenance=json.dumps(recipe.provenance()),
            run_hash=run_hash,
        ),
        name="derivatives",
        mem_gb=6 * vol + 0.2,  # the Chimap's streaking index: one FFT of the padded box
        run_without_submitting=True,
        overwrite=True,  # always (re)write: cheap, and restores deleted outputs on rerun
    )
    wf.connect([
        (load, mask_wf, [("phase", "inputnode.phase"), ("magnitude", "inputnode.magnitude"),
                         ("meta", "inputnode.meta")]),
        (load, unwrap_wf, [("phase", "inputnode.phase"), ("magnitude", "inputnode.magnitude"),
                           ("meta", "inputnode.meta")]),
        (field_mask[0], unwrap_wf, [(field_mask[1], "inputnode.mask")]),
        (load, combine_wf, [("magnitude", "inputnode.magnitude"), ("meta", "inputnode.meta")]),
        (field_mask[0], combine_wf, [(field_mask[1], "inputnode.mask")]),
        (unwrap_wf, combine_wf, [("outputnode.unwrapped", "inputnode.unwrapped")]),
        (load, background_wf, [("meta", "inputnode.meta")]),
        (mask_wf, background_wf, [("outputnode.mask", "inputnode.mask")]),
        (combine_wf, background_wf, [("outputnode.field", "inputnode.field"),
                                     ("outputnode.noise", "inputnode.noise")]),
        (load, inversion_wf, [("meta", "inputnode.meta"),
                              ("magnitude", "inputnode.magnitude")]),
        (combine_wf, inversion_wf, [("outputnode.noise", "inputnode.noise")]),
        (background_wf, inversion_wf, [("outputnode.local_field", "inputnode.local_field"),
                                       ("outputnode.local_mask", "inputnode.local_mask")]),
        (load, write, [("meta", "meta")]),
        (mask_wf, write, [("outputnode.mask", "mask")]),
        (combine_wf, write, [("outputnode.field", "total_field")]),
        (final_local[0], write, [(final_local[1], "local_field")]),
        (final_mask[0], write, [(final_mask[1], "local_mask")]),
        (final_note[0], write, [(final_note[1], "reference_note")]),
        (final_chi[0], sign, [(final_chi[1], "chi")]),
        (final_mask[0], sign, [(final_mask[1], "mask")]),
        (sign, write, [("chi", "chi"), ("sign", "sign"), ("report", "sign_check")]),
    ])  # fmt: skip
    if run.magnitude_files and registration:
        reg_wf = init_registration_wf(
            run=run,
            output_dir=output_dir,
            bids_dir=bids_dir,
            provenance=recipe.provenance(),
            n_procs=n_procs,
            mem_gb=max(1.0, 25 * vol + 0.5),
        )
        reg_wf.get_node("registration_derivatives").inputs.run_hash = run_hash
        if run.t1w is not None:
            reg_wf.inputs.inputnode.t1w = str(run.t1w)
        wf.connect([
            (load, reg_wf, [("magnitude", "inputnode.magnitude"), ("meta", "inputnode.meta")]),
            (final_mask[0], reg_wf, [(final_mask[1], "inputnode.mask")]),
            (sign, reg_wf, [("chi", "inputnode.chi")]),
        ])  # fmt: skip
    if segmentation is not None:
        seg_wf = init_segmentation_wf(
            segmentation, run=run, output_dir=output_dir, bids_dir=bids_dir, mem_gb=2 * vol + 0.3
        )
        seg_wf.get_node("segmentation_derivatives").inputs.run_hash = run_hash
        wf.connect([
            (sign, seg_wf, [("chi", "inputnode.chi")]),
            (final_mask[0], seg_wf, [(final_mask[1], "inputnode.mask")]),
        ])  # fmt: skip
    if run.magnitude_files and len(run.phase_files) >= 2:  # R2* needs two echoes
        r2star_wf = init_r2star_wf(recipe["r2star"], mem_gb=3 * vol4 + 0.2)
        wf.connect([
            (load, r2star_wf, [("magnitude", "inputnode.magnitude"), ("meta", "inputnode.meta")]),
            (field_mask[0], r2star_wf, [(field_mask[1], "inputnode.mask")]),
            (r2star_wf, write, [("outputnode.r2star", "r2star"), ("outputnode.t2star", "t2star")]),
        ])  # fmt: skip
        for _, inv in stages:
            wf.connect(r2star_wf, "outputnode.r2star", inv, "inputnode.r2star")
        if two_pass_wf is not None:
            wf.connect(r2star_wf, "outputnode.r2star", two_pass_wf, "inputnode.r2star")
    return wf


def init_participant_wf(
    runs: list[Run],
    config: Config,
    *,
    mask_files: dict[str, str] | None = None,
    segmentations: dict[str, Segmentation] | None = None,
    run_hashes: dict[str, str] | None = None,
) -> pe.Workflow:
    """All runs' QSM workflows side by side in one workflow, for one nipype execution.

    Parameters
    ----------
    runs : list of Run
        The runs to process.
    config : Config
        The settings (:mod:`qsm_bids.config`); the work folder is
        ``config.execution.work_dir``. Each FFT-heavy node gets
        ``config.nipype.omp_nthreads`` threads where that is set (> 0); otherwise the
        cores (``config.nipype.nprocs``, 0 = all available) are shared: with R runs,
        ``cores // min(R, cores)`` threads each, so R runs can proceed in parallel.
    mask_files, segmentations, run_hashes : dict or None, default None
        Map a run's :attr:`~qsm_bids.bids.layout.Run.name` to a user brain mask, a user
        segmentation and the provenance hash written into its sidecars (``RunHash``).
    """
    recipe = config.recipe
    wf = pe.Workflow(name="qsm_bids_wf", base_dir=str(Path(config.execution.work_dir).resolve()))
    threads = omp_threads(config, len(runs))
    for run in runs:
        qsm_wf = init_qsm_wf(
            run,
            config,
            recipe=recipe,
            mask_file=(mask_files or {}).get(run.name),
            segmentation=(segmentations or {}).get(run.name),
            run_hash=(run_hashes or {}).get(run.name, ""),
            omp_nthreads=threads,
        )
        wf.add_nodes([qsm_wf])
    return wf


def omp_threads(config: Config, n_runs: int) -> int:
    """Threads per FFT-heavy node: ``config.nipype.omp_nthreads`` when set (> 0), else the
    cores (``config.nipype.nprocs``, 0 = all available) shared between ``n_runs`` runs
    that can go side by side."""
    if config.nipype.omp_nthreads > 0:
        return int(config.nipype.omp_nthreads)
    cores = config.nipype.nprocs if config.nipype.nprocs > 0 else len(os.sched_getaffinity(0))
    cores = max(1, int(cores))
    return max(1, cores // max(1, min(n_runs, cores)))


def _resolved(path: Path | str | None) -> str | None:
    """``path`` made absolute (nodes run in their own folders), or None."""
    return str(Path(path).resolve()) if path else None
