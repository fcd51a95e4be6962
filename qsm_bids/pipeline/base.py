"""Top-level workflows: one QSM workflow per BIDS run, and the participant-level workflow.

The data flow of :func:`init_qsm_wf`, one sub-workflow per arrow (its connection list
follows this diagram line by line)::

    load -> mask -> field_mask (holes filled for two-pass) -> unwrap -> combine
         (total field and its noise, Hz)
    load, mask, combine -> background (local field, Hz) -> inversion (chi, ppm)
         -> feedback (relaxed passes + the consistent local field; none: passed through)
         -> two_pass (second pass in the mask's holes; off: passed through)
         -> outputs (phase-sign check, derivatives)
    load, field_mask -> r2star (R2*, T2*) -> every inversion, outputs   (with magnitudes)
    load, outputs (chi), two_pass (local mask) -> registration to MNI152NLin2009aSym,
         AAL3 into the subject, regional statistics -> derivatives
    outputs (chi), two_pass (local mask), user segmentation -> regional statistics
         -> derivatives   (--segmentation)
    outputs (chi, sign), two_pass, combine, mask -> estimate reportlets (the figures of
         the written fields and map, with the sign the check applied)

Each stage's builder draws its own QC figure (a reportlet) into
``OUTPUT_DIR/sub-<label>/figures/``; the report is assembled from them.

Sub-workflows: :mod:`~qsm_bids.pipeline.field` (mask, unwrapping, echo combination),
:mod:`~qsm_bids.pipeline.susceptibility` (background, inversion, two-pass, R2*),
:mod:`~qsm_bids.pipeline.feedback`, :mod:`~qsm_bids.pipeline.outputs` and
:mod:`~qsm_bids.pipeline.registration`.
"""

from __future__ import annotations

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
from qsm_bids.interfaces.load import LoadRun, run_to_json
from qsm_bids.interfaces.reportlets import Reportlets
from qsm_bids.pipeline.feedback import first_pass_inversion, init_feedback_wf
from qsm_bids.pipeline.field import (
    init_echo_combination_wf,
    init_field_mask_wf,
    init_mask_wf,
    init_unwrap_wf,
)
from qsm_bids.pipeline.nodes import ESTIMATE, feed, relay
from qsm_bids.pipeline.outputs import init_outputs_wf
from qsm_bids.pipeline.registration import init_registration_wf, init_segmentation_wf
from qsm_bids.pipeline.susceptibility import (
    init_background_wf,
    init_estimate_reportlets_wf,
    init_inversion_wf,
    init_r2star_wf,
    init_two_pass_wf,
)
from qsm_bids.pipeline.swi import init_swi_wf
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


def run_recipe(recipe: Recipe, run: Run, mask_file: str | None = None) -> Recipe:
    """The recipe as it applies to ``run``: the user's brain mask (``mask_file``) replaces
    the mask stage; a run without magnitude images gets the phase-quality mask
    (:func:`phase_only_recipe`) where the recipe's mask needs them."""
    if mask_file:
        user = StageChoice("mask", "user_mask", {"mask_file": str(mask_file)})
        return replace(recipe, stages={**recipe.stages, "mask": user})
    if not run.magnitude_files and recipe["mask"].algorithm == "magnitude":
        return phase_only_recipe(recipe)
    return recipe


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
    """The full QSM workflow for one run (subject, session, acquisition, run), wired as the
    module docstring's diagram.

    Parameters
    ----------
    run : Run
        The run's files and metadata (from :func:`qsm_bids.bids.layout.find_runs`).
    config : Config
        The settings (:mod:`qsm_bids.config`): folders from ``config.execution``; from
        ``config.workflow`` the reference mask, the phase sign (``"-1"`` negates the phase
        on reading; the check of :func:`~qsm_bids.pipeline.outputs.init_outputs_wf` runs in
        every mode) and the registration (:func:`init_run_registration_wf`; runs with
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
        Provenance hash of what produced the outputs (inputs, recipe, version), written as
        ``RunHash`` into every sidecar when non-empty.
    omp_nthreads : int, default 1
        Threads of each FFT-heavy node.
    name : str or None, default None
        Workflow name; default :func:`workflow_name`.
    """
    recipe = run_recipe(recipe or config.recipe, run, mask_file)
    bg, inv, ref = recipe["background"], recipe["inversion"], recipe["reference"]
    two_pass = bool(inv.params.get(registry.TWO_PASS, False))
    vol, vol4 = estimate_volume_gb(run)
    threads = max(1, int(omp_nthreads))
    heavy = {"mem_gb": 30 * vol + 0.3, "n_procs": threads}  # the FFT-heavy nodes
    susc = {**heavy, "reference_mask": _resolved(config.workflow.reference_mask)}
    rep = Reportlets.for_run(_folders(config)["output_dir"], run)
    wf = pe.Workflow(name=name or workflow_name(run))
    load = load_node(run, config.workflow.phase_sign, mem_gb=3 * vol4 + 0.2)
    mask_wf = init_mask_wf(
        recipe["mask"], mask_file=mask_file, mem_gb=2 * vol4 + 0.2, reportlets=rep
    )
    field_mask_wf = init_field_mask_wf(fill_holes=two_pass, mem_gb=vol + 0.1)
    unwrap_wf = init_unwrap_wf(
        recipe["unwrap"], mem_gb=4 * vol4 + 0.3, n_procs=threads, reportlets=rep
    )
    combine_wf = init_echo_combination_wf(recipe["combine"], mem_gb=4 * vol4 + 0.2, reportlets=rep)
    background_wf = init_background_wf(bg, **heavy)
    inversion_wf = init_inversion_wf(first_pass_inversion(inv, bg), ref, **susc)
    feedback_wf = init_feedback_wf(bg, inv, ref, **susc)
    two_pass_wf = init_two_pass_wf(bg, inv, ref, enabled=two_pass, **susc)
    outputs_wf = init_outputs_wf(
        run, **_folders(config), provenance=recipe.provenance(),
        phase_sign=config.workflow.phase_sign, run_hash=run_hash, vol_gb=vol,
    )  # fmt: skip
    wf.connect([
        (load, mask_wf, feed("phase", "magnitude", "meta")),
        (mask_wf, field_mask_wf, relay("mask")),
        (load, unwrap_wf, feed("phase", "magnitude", "meta")),
        (field_mask_wf, unwrap_wf, relay("mask")),
        (load, combine_wf, feed("magnitude", "meta")),
        (field_mask_wf, combine_wf, relay("mask")),
        (unwrap_wf, combine_wf, relay("unwrapped")),
        (load, background_wf, feed("meta")),
        (mask_wf, background_wf, relay("mask")),
        (combine_wf, background_wf, relay("field", "noise")),
        (load, inversion_wf, feed("meta", "magnitude")),
        (combine_wf, inversion_wf, relay("noise")),
        (background_wf, inversion_wf, relay("local_field", "local_mask")),
        (load, feedback_wf, feed("meta", "magnitude")),
        (mask_wf, feedback_wf, relay("mask")),
        (combine_wf, feedback_wf, relay("field", "noise")),
        (background_wf, feedback_wf, relay("local_field", "local_mask")),
        (inversion_wf, feedback_wf, relay("chi", "chi_raw", "reference_note")),
        (load, two_pass_wf, feed("meta", "magnitude")),
        (field_mask_wf, two_pass_wf, [("outputnode.mask", "inputnode.filled_mask")]),
        (combine_wf, two_pass_wf, relay("field", "noise")),
        (feedback_wf, two_pass_wf, relay(*ESTIMATE)),
        (load, outputs_wf, feed("meta")),
        (mask_wf, outputs_wf, relay("mask")),
        (combine_wf, outputs_wf, [("outputnode.field", "inputnode.total_field")]),
        (two_pass_wf, outputs_wf, relay("chi", "local_field", "local_mask", "reference_note")),
    ])  # fmt: skip
    figures_wf = init_estimate_reportlets_wf(rep, ref, reference_mask=susc["reference_mask"])
    wf.connect([
        (outputs_wf, figures_wf, [("outputnode.chi", "inputnode.chi"),
                                  ("outputnode.sign", "inputnode.sign"),
                                  ("outputnode.streaking_index", "inputnode.streaking_index")]),
        (two_pass_wf, figures_wf, relay("local_field", "local_mask", "reference_note")),
        (combine_wf, figures_wf, [("outputnode.field", "inputnode.total_field")]),
        (mask_wf, figures_wf, [("outputnode.mask", "inputnode.brain_mask")]),
        (load, figures_wf, feed("meta", "magnitude")),
    ])  # fmt: skip
    if run.magnitude_files and len(run.phase_files) >= 2:  # R2* needs two echoes
        r2star_wf = init_r2star_wf(recipe["r2star"], mem_gb=3 * vol4 + 0.2, reportlets=rep)
        wf.connect(r2star_wf, "outputnode.r2star", figures_wf, "inputnode.r2star")
        wf.connect([
            (load, r2star_wf, feed("magnitude", "meta")),
            (field_mask_wf, r2star_wf, relay("mask")),
            (r2star_wf, inversion_wf, relay("r2star")),
            (r2star_wf, feedback_wf, relay("r2star")),
            (r2star_wf, two_pass_wf, relay("r2star")),
            (r2star_wf, outputs_wf, relay("r2star", "t2star")),
        ])  # fmt: skip
    if run.magnitude_files and len(run.phase_files) >= 2:  # SWI and minIP (multi-echo)
        swi_wf = init_swi_wf(run, **_folders(config), reportlets=rep, run_hash=run_hash,
                             vol_gb=vol)  # fmt: skip
        wf.connect([
            (load, swi_wf, feed("magnitude", "meta")),
            (outputs_wf, swi_wf, relay("sign")),
            (two_pass_wf, swi_wf, relay("local_field", "local_mask")),
            (mask_wf, swi_wf, [("outputnode.mask", "inputnode.brain_mask")]),
        ])  # fmt: skip
    if run.magnitude_files and config.workflow.registration:
        reg_wf = init_run_registration_wf(run, config, recipe, run_hash=run_hash,
                                          n_procs=threads, vol_gb=vol, reportlets=rep)  # fmt: skip
        wf.connect([
            (load, reg_wf, feed("magnitude", "meta")),
            (outputs_wf, reg_wf, relay("chi")),
            (two_pass_wf, reg_wf, [("outputnode.local_mask", "inputnode.mask")]),
        ])  # fmt: skip
    if segmentation is not None:
        seg_wf = init_segmentation_wf(segmentation, run=run, **_folders(config),
                                      mem_gb=2 * vol + 0.3, reportlets=rep)  # fmt: skip
        seg_wf.get_node("segmentation_derivatives").inputs.run_hash = run_hash
        wf.connect([
            (outputs_wf, seg_wf, relay("chi")),
            (two_pass_wf, seg_wf, [("outputnode.local_mask", "inputnode.mask")]),
        ])  # fmt: skip
    return wf


def load_node(run: Run, phase_sign: str = "auto", *, mem_gb: float = 1.0) -> pe.Node:
    """The node that reads and checks the run's echoes (:class:`LoadRun`); ``phase_sign``
    ``"-1"`` negates the phase on reading.

    Outputs: ``phase`` (4D, rad), ``magnitude`` (4D, where the run has them), ``meta``."""
    return pe.Node(
        LoadRun(
            run_json=run_to_json(run),
            in_files=[str(p) for p in (*run.phase_files, *run.magnitude_files)],
            phase_sign=-1 if phase_sign == "-1" else 1,
        ),
        name="load",
        mem_gb=mem_gb,
    )


def init_run_registration_wf(
    run: Run, config: Config, recipe: Recipe, *, run_hash: str = "", n_procs: int = 1,
    vol_gb: float = 0.01, reportlets: Reportlets | None = None,
) -> pe.Workflow:  # fmt: skip
    """The registration branch of ``run`` (:func:`init_registration_wf`: magnitude to
    MNI152NLin2009aSym, chi into the template, AAL3 into the subject and its regional
    statistics), writing its derivatives into ``config.execution.output_dir`` with
    ``run_hash`` in the sidecars; the T1w of the session is used where the run has one.
    ANTs' random seed is ``config.execution.random_seed`` where set."""
    seed = config.execution.random_seed
    reg_wf = init_registration_wf(
        run=run,
        **_folders(config),
        provenance=recipe.provenance(),
        n_procs=n_procs,
        mem_gb=max(1.0, 25 * vol_gb + 0.5),
        reportlets=reportlets,
        force_regionstats=config.workflow.force_regionstats,
        **({} if seed is None else {"seed": int(seed)}),
    )
    reg_wf.get_node("registration_derivatives").inputs.run_hash = run_hash
    if run.t1w is not None:
        reg_wf.inputs.inputnode.t1w = str(run.t1w)
    return reg_wf


def init_participant_wf(
    runs: list[Run],
    config: Config,
    *,
    recipe: Recipe | None = None,
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
    recipe : Recipe or None, default None
        The recipe; default ``config.recipe`` (a caller's modified recipe otherwise).
    mask_files, segmentations, run_hashes : dict or None, default None
        Map a run's :attr:`~qsm_bids.bids.layout.Run.name` to a user brain mask, a user
        segmentation and the provenance hash written into its sidecars (``RunHash``).
    """
    recipe = recipe or config.recipe
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


def _folders(config: Config) -> dict[str, Path]:
    """``output_dir`` and ``bids_dir`` of ``config.execution``, absolute."""
    return {
        "output_dir": Path(config.execution.output_dir).resolve(),
        "bids_dir": Path(config.execution.bids_dir).resolve(),
    }
