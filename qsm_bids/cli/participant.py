"""The participant level: validate everything, build the workflow, run it, summarise."""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids import __version__
from qsm_bids.bids.derivatives import (
    derivative_path,
    write_bidsignore,
    write_dataset_description,
    write_json_atomic,
    write_readme,
    write_text_atomic,
)
from qsm_bids.bids.layout import FIELD_STRENGTH_MISMATCH, Run, find_runs, validate_output_dir
from qsm_bids.cli.execution import run_workflow, signal_name
from qsm_bids.cli.plugins import (
    check_plugin,
    plugin_settings,
    set_node_requests,
    wait_for_slurm_jobs,
)
from qsm_bids.cli.progress import Progress
from qsm_bids.config import Config
from qsm_bids.errors import QSMInputError
from qsm_bids.recipe import Recipe

log = logging.getLogger("qsm_bids")


@dataclass
class ParticipantResult:
    """What a participant-level run produced."""

    succeeded: list[Run] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run name -> one-line reason
    invalid: dict[str, str] = field(default_factory=dict)  # run name -> input error, not run
    incomplete: dict[str, str] = field(default_factory=dict)  # run name -> what is missing
    seconds: float = 0.0
    #: the signal (SIGTERM, SIGINT) that stopped the run, if one did
    signal: int | None = None
    #: ``logs/summary-<stamp>.json``: every run's outcome and reason
    summary: Path | None = None


def _spatial_shape(img) -> tuple[int, ...]:
    """Shape without trailing singleton axes (``(X, Y, Z, 1)`` is a 3D image)."""
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def check_run_headers(run: Run) -> None:
    """Checks before any heavy work (:func:`qsm_bids.bids.load.validate_run`): every file is
    a readable 3D image (or 4D, one volume per echo) on one grid, its data is not truncated,
    non-finite or all zero, and the phase has a known encoding. Raises
    :class:`QSMInputError` naming the offending file."""
    from qsm_bids.bids.load import validate_run

    validate_run(run)


def check_mask_on_grid(mask: Path, run: Run, option: str) -> None:
    """A user-given mask must be a readable image on the run's voxel grid (shape, affine)."""
    try:
        img = nb.load(str(mask))
    except Exception as exc:
        raise QSMInputError(mask, f"{option}: cannot read NIfTI header ({exc})") from exc
    ref = nb.load(str(run.phase_files[0]))
    if _spatial_shape(img)[:3] != _spatial_shape(ref)[:3] or len(_spatial_shape(img)) != 3:
        raise QSMInputError(
            mask, f"{option}: shape {img.shape} differs from the data's {ref.shape} ({run.name})"
        )
    if not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise QSMInputError(mask, f"{option}: affine differs from the data's ({run.name})")


def find_mask_files(
    runs: list[Run], derivatives: Path | None, mask_file: Path | None
) -> dict[str, str]:
    """User brain masks per run name, from ``--mask-file`` or a derivatives folder."""
    if mask_file is not None:
        if len(runs) != 1:
            raise QSMInputError(mask_file, f"--mask-file needs exactly one run, found {len(runs)}")
        if not mask_file.is_file():
            raise QSMInputError(mask_file, "mask file not found")
        return {runs[0].name: str(mask_file.resolve())}
    if derivatives is None:
        return {}
    if not derivatives.is_dir():
        raise QSMInputError(derivatives, "derivatives folder not found")
    found = {}
    for run in runs:
        for ext in (".nii.gz", ".nii"):
            path = derivative_path(derivatives, run, "mask", desc="brain", extension=ext)
            if path.is_file():
                found[run.name] = str(path.resolve())
                break
    return found


def find_user_segmentations(
    runs: list[Run], segmentation: Path | None, name: str | None = None
) -> dict:
    """``--segmentation``: every run's segmentation, found and checked (no heavy work).

    Returns ``{run name: Segmentation}`` (empty without ``segmentation``); warnings about
    unnamed labels are logged. Raises :class:`QSMInputError` naming the file or folder
    (see :mod:`qsm_bids.bids.segmentation`).
    """
    from qsm_bids.bids.segmentation import (
        check_segmentation,
        find_segmentations,
        validate_segmentation_name,
    )

    if segmentation is None:
        if name is not None:
            validate_segmentation_name(name)
            log.warning("--segmentation-name %s has no effect without --segmentation", name)
        return {}
    segs = find_segmentations(runs, segmentation, name=name)
    for run in runs:
        segs[run.name] = check_segmentation(segs[run.name], run)
        for text in segs[run.name].warnings:
            log.warning("%s: %s", run.name, text)
        seg = segs[run.name]
        log.info(
            "%s: segmentation %s (%s, %d regions; names from %s)",
            run.name,
            seg.path,
            seg.name,
            len(seg.names),
            seg.labels_file or "none",
        )
    return segs


def resolve_resources(nprocs: int, mem_gb: float) -> tuple[int, float]:
    """Cores and memory (GB) to use: the user's values or what the machine has."""
    cores = nprocs if nprocs > 0 else (len(os.sched_getaffinity(0)) or 1)
    if mem_gb <= 0:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
        except (ValueError, OSError):
            total = 8.0
        mem_gb = 0.9 * total
    return cores, mem_gb


def run_participant_level(config: Config, *, recipe: Recipe | None = None) -> ParticipantResult:
    """Process every selected run of ``config``; inputs are validated before anything
    heavy starts.

    A run whose files fail the header checks is left out (listed in ``invalid``, nothing
    written for it) and the other runs are processed. Unless
    ``execution.skip_bids_validation``, the BIDS validator reads the input first; its
    findings are logged as warnings and never block (the app's own checks do).

    ``workflow.segmentation`` (``--segmentation``) is a BIDS derivatives folder with a
    ``*_dseg.nii[.gz]`` per subject (and session), or one label image for a single subject;
    it adds ``<prefix>_desc-<name>_regionstats.tsv`` to every run, also without
    registration (see :mod:`qsm_bids.bids.segmentation`). Any problem with it is an error
    before anything is written.

    The config is written to ``OUTPUT_DIR/logs/config-<run_stamp>.toml`` and the log to
    ``OUTPUT_DIR/logs/qsm_bids_<run_stamp>.log``; the methods text to
    ``OUTPUT_DIR/logs/CITATION.md`` and ``.bib``. Every run's derivatives record its
    :func:`~qsm_bids.bids.provenance.run_hash`; derivatives of an earlier run with another
    hash are removed before the run starts, and a run counts as succeeded only when its
    ``Chimap`` sidecar records this run's hash.

    Parameters
    ----------
    config : Config
        The settings (:func:`qsm_bids.cli.parser.config_from_args`).
    recipe : Recipe or None, default None
        A recipe to use instead of ``config.recipe`` (for callers holding a modified one).

    Raises
    ------
    QSMInputError
        A problem with the dataset, the options or every run, before anything is written.
    """
    from qsm_bids.bids.provenance import outputs_match, remove_stale_outputs, run_hash
    from qsm_bids.pipeline.base import init_participant_wf

    start = time.monotonic()
    ex, wfs, npp = config.execution, config.workflow, config.nipype
    recipe = recipe if recipe is not None else config.recipe
    bids_dir = Path(ex.bids_dir).resolve()
    output_dir = Path(ex.output_dir).resolve()
    validate_output_dir(bids_dir, output_dir)
    check_plugin(npp.plugin)
    seed_random(ex.random_seed)
    findings = [] if ex.skip_bids_validation else validate_input(bids_dir)
    invalid: dict[str, str] = {}  # run name -> reason; dataset-level problems still raise
    runs = find_runs(
        bids_dir,
        list(ex.participant_label) or None,
        list(ex.session_label) or None,
        invalid=invalid,
        bids_filters=ex.bids_filters,
    )
    for name, reason in invalid.items():
        log.error("SKIPPED %s: %s", name, reason)
    for run in runs:
        try:
            check_run_headers(run)
        except QSMInputError as exc:
            invalid[run.name] = str(exc)
            log.error("SKIPPED %s: %s", run.name, exc)
    runs = [run for run in runs if run.name not in invalid]
    if not runs:
        raise QSMInputError(None, "; ".join(invalid.values()))
    reference_mask = wfs.reference_mask
    if recipe["reference"].algorithm == "mask":
        if reference_mask is None or not reference_mask.is_file():
            raise QSMInputError(
                reference_mask, "the recipe references to a mask: give --reference-mask PATH"
            )
    masks = find_mask_files(runs, wfs.derivatives, wfs.mask_file)
    for run in runs:
        if run.name in masks:
            check_mask_on_grid(Path(masks[run.name]), run, "brain mask")
        if reference_mask is not None:
            check_mask_on_grid(reference_mask, run, "--reference-mask")
    segs = find_user_segmentations(runs, wfs.segmentation, wfs.segmentation_name)
    cores, mem = resolve_resources(npp.nprocs, npp.mem_mb / 1024)
    if npp.omp_nthreads > cores:
        log.warning(
            "--omp-nthreads %d exceeds the %d core(s) in use; each step uses %d thread(s)",
            npp.omp_nthreads,
            cores,
            cores,
        )
    log.info(
        "%d run(s): %s; pipeline %s; %d core(s), %.1f GB",
        len(runs),
        ", ".join(r.name for r in runs),
        recipe.name,
        cores,
        mem,
    )
    work_dir = Path(ex.work_dir).resolve()
    hashes = {
        run.name: run_hash(
            run,
            config,
            recipe,
            mask_file=masks.get(run.name),
            segmentation_file=segs[run.name].path if run.name in segs else None,
        )
        for run in runs
    }
    # the builders get the resolved resources (the written config keeps the user's)
    built = config.with_updates(
        "nipype",
        nprocs=cores,
        omp_nthreads=min(npp.omp_nthreads, cores),
        mem_mb=max(1, int(round(mem * 1024))),
    ).with_updates("execution", bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir)
    wf = init_participant_wf(
        runs, built, recipe=recipe, mask_files=masks, segmentations=segs, run_hashes=hashes
    )
    check_memory(wf, runs, mem)
    check_disk(output_dir, work_dir, runs)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(output_dir, version=__version__, source_dir=bids_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_bidsignore(output_dir)
    write_readme(output_dir)
    log_path = attach_log_file(output_dir, stamp=ex.run_stamp)
    written = config
    if recipe.provenance() != config.recipe.provenance():  # a caller's modified recipe
        path = write_text_atomic(output_dir / "logs" / f"recipe-{ex.run_stamp}.toml",
                                 recipe_to_toml(recipe))  # fmt: skip
        written = config.with_updates("workflow", pipeline=str(path))
    config_path = written.write(output_dir / "logs")
    log.info("qsm_bids %s; log file %s; settings %s", __version__, log_path, config_path)
    write_boilerplate(config, recipe, runs, output_dir / "logs", segs)
    for line in findings:  # the log file only (debug level)
        log.debug("%s", line)
    for run in runs:  # console and log file
        log.info(
            "%s: field strength %.4f T from %s; RunHash %s",
            run.name,
            run.field_strength,
            run.field_strength_source or "the run's metadata",
            hashes[run.name][:12],
        )
        for text in run.warnings:
            if text.startswith(FIELD_STRENGTH_MISMATCH):
                log.warning("%s: %s", run.name, text)
        remove_stale_outputs(output_dir, run, hashes[run.name])
    for name, reason in invalid.items():
        log.debug("skipped %s (bad input): %s", name, reason)
    quiet_nipype(verbose=npp.verbose_nipype)
    crash_dir = work_dir / "crash"
    wf.config["execution"].update(
        {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": ex.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "hash_method": "timestamp",
            "poll_sleep_duration": 0.2,
        }
    )
    from nipype.interfaces.utility import IdentityInterface

    from qsm_bids.pipeline.base import workflow_name

    steps = {
        workflow_name(run): sum(
            not isinstance(node.interface, IdentityInterface)
            for node in wf.get_node(workflow_name(run))._get_all_nodes()
        )
        for run in runs
    }
    labels = {workflow_name(run): run.name for run in runs}
    settings, tag = plugin_settings(
        npp.plugin,
        dict(npp.plugin_args),
        cores=cores,
        mem_gb=mem,
        status_callback=Progress(steps, labels),
    )
    set_node_requests(wf, npp.plugin)
    # nipype's MultiProc loop calls gc.collect() before every submission and after every
    # node; with pybids and nipype loaded each full collection walks about a million
    # objects (0.1 s of a core). Objects alive now are moved out of the collector's reach.
    started = time.time()
    gc.freeze()
    try:
        outcome = run_workflow(wf, npp.plugin, settings)
    finally:
        gc.unfreeze()
    if tag is not None and not outcome.interrupted:
        log.info("waiting for the SLURM jobs of this run (comment %s)", tag)
        outcome.error = wait_for_slurm_jobs(tag) or outcome.error
        if outcome.error:
            log.error("%s", outcome.error)

    result = ParticipantResult(
        seconds=time.monotonic() - start, invalid=invalid, signal=outcome.signal
    )
    for run in runs:
        if not outputs_match(output_dir, run, hashes[run.name]):
            if outcome.interrupted:
                reason = (
                    f"stopped by {signal_name(outcome.signal)} before it finished; the "
                    f"finished steps are kept in {work_dir}: rerun the same command to resume"
                )
            else:
                reason = summarise_crash(crash_dir, run, since=started)
                if reason == NO_CRASH_FILE and outcome.error:
                    reason = outcome.error  # e.g. a SLURMGraph job that cannot start
                reason += disk_note(output_dir, work_dir)
            result.failed[run.name] = reason
            continue
        result.succeeded.append(run)
        missing = missing_tables(output_dir, run, wfs.registration, segs)
        if missing:
            reason = summarise_crash(crash_dir, run)
            result.incomplete[run.name] = f"no {' and no '.join(missing)}: {reason}"
            log.warning("%s: the QSM maps are written, but %s", run.name, reason)
    result.summary = write_summary(output_dir / "logs", ex.run_stamp, result, outcome)
    return result


def write_summary(log_dir: Path, stamp: str, result: ParticipantResult, outcome) -> Path | None:
    """``logs/summary-<stamp>.json``: each run's status (succeeded, incomplete, failed,
    invalid) with its reason, the signal that stopped the run and the workers that died.
    A summary that cannot be written (a full disk) is logged, not raised."""
    from qsm_bids.cli.execution import signal_name

    runs = {run.name: {"Status": "succeeded"} for run in result.succeeded}
    for name, reason in result.incomplete.items():
        runs[name] = {"Status": "incomplete", "Reason": reason}
    for name, reason in result.failed.items():
        runs[name] = {"Status": "failed", "Reason": reason}
    for name, reason in result.invalid.items():
        runs[name] = {"Status": "invalid", "Reason": reason}
    summary = {
        "Runs": runs,
        "Seconds": round(result.seconds, 1),
        "Signal": signal_name(result.signal) if result.signal else None,
        "WorkerDeaths": [death.describe() for death in outcome.deaths],
        "Error": outcome.error,
    }
    try:
        return write_json_atomic(log_dir / f"summary-{stamp}.json", summary)
    except OSError as exc:
        log.error("the run summary could not be written: %s", exc)
        return None


def disk_note(*folders: Path) -> str:
    """``"; the disk of <folder> is full (N MB free)"`` for each folder with less than
    64 MB free (a full disk can keep nipype from writing its own crash files), else ``""``."""
    import shutil

    notes = []
    for folder in dict.fromkeys(folders):
        try:
            free = shutil.disk_usage(_existing_ancestor(folder)).free
        except OSError:
            continue
        if free < 64 * 1024**2:
            notes.append(f"; the disk of {folder} is full ({free / 1024**2:.1f} MB free)")
    return "".join(notes)


def recipe_to_toml(recipe: Recipe) -> str:
    """A recipe as the TOML that :func:`qsm_bids.recipe.load_recipe` reads back to the
    same stages and parameters."""
    from qsm_bids.config import _toml_value

    lines = ["[pipeline]", f"name = {_toml_value(recipe.name)}"]
    lines.append(f"description = {_toml_value(recipe.description)}")
    for stage, choice in recipe.stages.items():
        lines += ["", f"[{stage}]", f"algorithm = {_toml_value(choice.algorithm)}"]
        for key, value in choice.provenance()["Parameters"].items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def missing_tables(output_dir: Path, run: Run, registration: bool, segs: dict) -> list[str]:
    """The regional tables a succeeded run should have but does not. The AAL3 table is
    not missing when the registration writer skipped it on purpose (low registration
    quality, a slab or crop; the reason is logged)."""
    from qsm_bids.bids.provenance import regional_statistics_skipped

    missing = []
    stats = derivative_path(output_dir, run, "regionstats", desc="aal3", extension=".tsv")
    if registration and run.magnitude_files and not stats.is_file():
        skipped = regional_statistics_skipped(output_dir, run)
        if skipped:
            log.warning("%s: no AAL3 regional table: %s", run.name, skipped)
        else:
            missing.append("registration/regional statistics")
    if run.name in segs:
        name = segs[run.name].name
        path = derivative_path(output_dir, run, "regionstats", desc=name, extension=".tsv")
        if not path.is_file():
            missing.append(f"regional statistics of the segmentation {name!r}")
    return missing


def seed_random(seed: int | None) -> None:
    """``--random-seed``: seed numpy's global generator and set ``ANTS_RANDOM_SEED`` in
    the environment, which nipype's worker processes and ANTs inherit."""
    if seed is None:
        return
    np.random.seed(seed)  # noqa: NPY002 (the global generator, which unseeded code uses)
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    log.debug("random seed %d (numpy, ANTS_RANDOM_SEED)", seed)


#: validator errors of one code logged one by one on the console before they are counted
_MAX_FINDINGS_PER_CODE = 10


def validate_input(bids_dir: Path) -> list[str]:
    """Run the BIDS validator on the input; never blocks (the app's own checks decide what
    it cannot process: a phase sidecar without ``Units``, as dcm2niix writes it, is only a
    warning here).

    The console gets every validator *error* as a warning naming the file (up to
    :data:`_MAX_FINDINGS_PER_CODE` per code, then a count) and one line per code of its
    *warnings* (mostly recommended keys). Returns every finding, one line each, for the
    log file (attached once the inputs have passed the app's checks).
    """
    try:
        from qsm_bids.bids.validate import validate_dataset
    except ImportError:
        log.warning("BIDS validation skipped: the validator module is not available")
        return []
    try:
        result = validate_dataset(bids_dir)
    except QSMInputError as exc:
        log.warning("BIDS validation skipped: %s", exc)
        return []
    details = []
    for kind, issues in (("error", result.errors), ("warning", result.warnings)):
        for issue in issues:
            details.append(f"BIDS validator {kind} {issue.code}: {issue.location}: {issue.message}")
    counts: dict[str, int] = {}
    for issue in result.errors:
        counts[issue.code] = counts.get(issue.code, 0) + 1
        if counts[issue.code] <= _MAX_FINDINGS_PER_CODE:
            message = " ".join(str(issue.message).split())
            message = message if len(message) <= 160 else message[:157] + "..."
            log.warning("BIDS validator error %s: %s: %s", issue.code, issue.location, message)
    for code, n in counts.items():
        if n > _MAX_FINDINGS_PER_CODE:
            log.warning("BIDS validator: %d more %s error(s)", n - _MAX_FINDINGS_PER_CODE, code)
    for line in result.summary_lines():
        if line.startswith("warning"):
            log.info("BIDS validator %s", line)
    if result.errors:
        log.warning(
            "the BIDS validator found %d error(s) in %s; qsm_bids runs anyway (its own "
            "checks stop what it cannot process); --skip-bids-validation skips this check",
            len(result.errors),
            bids_dir,
        )
    else:
        log.info("BIDS validator: no errors in %s", bids_dir)
    return details


def write_boilerplate(
    config: Config, recipe: Recipe, runs: list[Run], log_dir: Path, segs: dict | None = None
) -> list[Path]:
    """The methods text with references for these settings, as ``log_dir/CITATION.md``
    and ``.bib``; returns the files (none where the methods module is not available)."""
    try:
        from qsm_bids.report.boilerplate import build_boilerplate, write_citation_files
    except ImportError:
        log.warning("no methods text: qsm_bids.report.boilerplate is not available")
        return []
    registration = config.workflow.registration and any(r.magnitude_files for r in runs)
    segmentation = None
    if segs:
        segmentation = next(iter(segs.values())).name
    elif config.workflow.segmentation is not None:
        segmentation = config.workflow.segmentation_name or "custom"
    # the acquisition is stated where every run shares it
    fields = {round(r.field_strength, 2) for r in runs}
    echoes = {tuple(round(t, 6) for t in r.echo_times) for r in runs}
    boilerplate = build_boilerplate(
        recipe.provenance(),
        registration=registration,
        segmentation=segmentation,
        field_strength_t=fields.pop() if len(fields) == 1 else None,
        echo_times_s=list(echoes.pop()) if len(echoes) == 1 else None,
    )
    files = write_citation_files(Path(log_dir), boilerplate)
    for path in files:
        log.info("methods text: %s", path)
    return files


def run_boilerplate_only(config: Config) -> list[Path]:
    """``--boilerplate-only``: find the runs and write the methods text, nothing else."""
    ex = config.execution
    bids_dir = Path(ex.bids_dir).resolve()
    output_dir = Path(ex.output_dir).resolve()
    validate_output_dir(bids_dir, output_dir)
    runs = find_runs(
        bids_dir,
        list(ex.participant_label) or None,
        list(ex.session_label) or None,
        invalid={},
        bids_filters=ex.bids_filters,
    )
    return write_boilerplate(config, config.recipe, runs, output_dir / "logs")


def attach_log_file(output_dir: Path, stamp: str = "") -> Path:
    """Send every qsm_bids message of this invocation (debug level) to a log file in
    ``OUTPUT_DIR/logs/``: ``qsm_bids_<stamp>.log`` (the config's ``run_stamp``), or
    without one ``qsm_bids_<time>_<pid>.log``, so that concurrent invocations (one
    participant each, e.g. an array job) do not share a file."""
    import sys

    folder = output_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    if not stamp:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{os.getpid()}"
    path = folder / f"qsm_bids_{stamp}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("qsm_bids")
    logger.addHandler(handler)
    logger.debug("command: %s", " ".join(sys.argv))
    return path


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(output_dir: Path, work_dir: Path, runs: list[Run]) -> None:
    """Refuse to start when the output or work folder cannot be written, or its file system
    has too little free space for the work files and derivatives of ``runs`` (about 8x the
    4D echo stack per run, measured on the phantom: 4.7x in the work folder, the rest for
    the derivatives and the report)."""
    import shutil
    import tempfile

    from qsm_bids.pipeline.base import estimate_volume_gb

    need = 0.1 + sum(8 * estimate_volume_gb(run)[1] for run in runs)
    for what, folder in (("output", output_dir), ("work", work_dir)):
        base = _existing_ancestor(folder)
        try:
            with tempfile.NamedTemporaryFile(dir=base, prefix=".qsm_bids_probe_"):
                pass
        except OSError as exc:
            raise QSMInputError(
                folder, f"the {what} folder cannot be written ({exc.strerror or exc})"
            ) from exc
        free = shutil.disk_usage(base).free / 1024**3
        if free < need:
            raise QSMInputError(
                folder,
                f"only {free:.1f} GB free for the {what} folder; about {need:.1f} GB are "
                f"needed for {len(runs)} run(s)",
            )


def check_memory(wf, runs: list[Run], mem_gb: float) -> None:
    """Refuse to start when a step of some run needs more memory than ``mem_gb``.

    Each node's ``mem_gb`` is set by the workflow builders from the data size (see
    :func:`qsm_bids.pipeline.base.init_qsm_wf`); nipype's scheduler keeps the sum of the
    running nodes' estimates under ``mem_gb``, but cannot run a node larger than it.
    """
    from qsm_bids.pipeline.base import workflow_name

    for run in runs:
        nodes = wf.get_node(workflow_name(run))._get_all_nodes()
        need = max(float(node.mem_gb) for node in nodes)
        if need > mem_gb:
            shape = nb.load(str(run.phase_files[0])).shape
            raise QSMInputError(
                run.phase_files[0],
                f"a {'x'.join(map(str, shape))} run needs about {need:.1f} GB for its largest "
                f"step but only {mem_gb:.1f} GB were allowed (--mem/--mem-gb); give more memory "
                "or process it on a larger machine",
            )


def quiet_nipype(verbose: bool = False) -> None:
    """nipype's own log messages: warnings only, unless ``verbose``."""
    from nipype import config
    from nipype import logging as nlogging

    level = "INFO" if verbose else "WARNING"
    config.set("logging", "workflow_level", level)
    config.set("logging", "interface_level", level)
    config.set("execution", "check_version", "false")
    nlogging.update_logging(config)


#: :func:`summarise_crash`'s answer when no crash file of the run was found
NO_CRASH_FILE = "no output was written (see the log above)"


def summarise_crash(crash_dir: Path, run: Run, *, since: float = 0.0) -> str:
    """One readable line about why a run failed, with the crash file's path; only crash
    files written after ``since`` (seconds since the epoch: this invocation's) count."""
    from qsm_bids.pipeline.base import workflow_name

    key = workflow_name(run)
    files = (
        sorted(
            (p for p in crash_dir.glob("crash-*.txt") if p.stat().st_mtime >= since - 1),
            key=lambda p: p.stat().st_mtime,
        )
        if crash_dir.is_dir()
        else []
    )
    for path in reversed(files):
        text = path.read_text(errors="replace")
        if key not in text:
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ("Error" in ln or "WorkerDied" in ln) and ":" in ln]
        reason = errors[-1] if errors else lines[-1]
        return f"{reason} (details: {path})"
    return NO_CRASH_FILE
