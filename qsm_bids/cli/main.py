"""Entry point of ``qsm-bids``: dispatches to the participant level, simulate, demo,
evaluate and invert.

Exit codes: 0 success; 1 some runs failed (or are incomplete: maps written, a regional
table missing) while processing; 128 + N stopped by signal N; 2 bad input or usage (nothing
written for the offending input; the other participants are still processed when only some
runs have bad files).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from qsm_bids.cli.parser import (
    SUBCOMMANDS,
    build_demo_parser,
    build_dicom_export_parser,
    build_evaluate_parser,
    build_invert_parser,
    build_simulate_parser,
    config_from_args,
    parse_participant_args,
)
from qsm_bids.errors import QSMInputError

log = logging.getLogger("qsm_bids")


def setup_logging(verbosity: int, *, quiet: bool = False) -> None:
    """Console messages of qsm_bids: progress by default, warnings and errors only with
    ``quiet`` (``-q``), debugging details with ``-v`` (and nipype's own with ``-vv``)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    logger = logging.getLogger("qsm_bids")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s qsm-bids: %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qsm-bids`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            command, rest = args[0], args[1:]
            try:
                if command == "simulate":
                    return cmd_simulate(build_simulate_parser().parse_args(rest))
                if command == "evaluate":
                    from qsm_bids.cli.evaluate import run_evaluate

                    return run_evaluate(build_evaluate_parser().parse_args(rest))
                if command == "invert":
                    return cmd_invert(build_invert_parser().parse_args(rest))
                if command == "dicom-export":
                    return cmd_dicom_export(build_dicom_export_parser().parse_args(rest))
                return cmd_demo(build_demo_parser().parse_args(rest))
            except (ValueError, OSError) as exc:  # bad options for the simulator, disk full
                print(f"qsm-bids {command}: error: {exc}", file=sys.stderr)
                return 2
        return cmd_participant(parse_participant_args(args))
    except QSMInputError as exc:
        print(f"qsm-bids: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsm-bids: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def cmd_group(ns) -> int:
    """``qsm-bids BIDS_DIR OUTPUT_DIR group``: one table of every participant's regions."""
    from qsm_bids.group import run_group_level

    setup_logging(ns.verbose, quiet=ns.quiet)
    res = run_group_level(
        ns.output_dir.resolve(),
        participant_labels=ns.participant_label,
        bids_dir=ns.bids_dir.resolve(),
        group_template=ns.group_template,
    )
    log.info(
        "group table of %d participant(s), %d run(s), %d rows: %s",
        len(res.participants),
        len(res.runs),
        res.n_rows,
        res.table,
    )
    if res.missing_participants:
        log.warning(
            "no region table (failed or not run) for: %s",
            ", ".join(f"sub-{p}" for p in res.missing_participants),
        )
    if res.template_mean is not None:
        log.info("study template: %s", res.template_mean)
    return 0


def write_reports(output_dir: Path, bids_dir: Path, subjects: set[str]) -> list[Path]:
    """One HTML report per participant (failed ones too: the report lists their errors);
    returns the reports written."""
    from qsm_bids.report import write_subject_report

    written = []
    for label in sorted(subjects):
        try:
            path = write_subject_report(output_dir.resolve(), label, bids_dir=bids_dir.resolve())
            written.append(Path(path))
            log.info("report: %s", path)
        except QSMInputError as exc:
            log.warning("no report for sub-%s: %s", label, exc)
        except Exception as exc:  # a figure must never turn a finished run into a failure
            log.warning("report for sub-%s failed: %s: %s", label, type(exc).__name__, exc)
    return written


def cmd_participant(ns) -> int:
    """``qsm-bids BIDS_DIR OUTPUT_DIR participant ...``"""
    if ns.analysis_level == "group":
        return cmd_group(ns)
    from qsm_bids.cli.participant import run_boilerplate_only, run_participant_level

    config = config_from_args(ns)
    ex = config.execution
    setup_logging(ex.verbose, quiet=ex.quiet)
    recipe = config.recipe  # an unknown or invalid recipe is an error before anything else
    if ex.boilerplate_only:
        files = run_boilerplate_only(config)
        return 0 if files else 1
    if ex.reports_only:
        return reports_only(config)
    result = run_participant_level(config, recipe=recipe)
    if result.signal is not None:
        from qsm_bids.cli.execution import signal_name

        for name, reason in result.failed.items():
            log.error("STOPPED %s: %s", name, reason)
        log.error(
            "qsm-bids: stopped by %s after %.0f s (%d run(s) finished; summary %s); rerun "
            "the same command to resume",
            signal_name(result.signal),
            result.seconds,
            len(result.succeeded),
            result.summary,
        )
        return 128 + result.signal
    complete = [run for run in result.succeeded if run.name not in result.incomplete]
    for run in complete:
        log.info("finished %s", run.name)
    for name, reason in result.failed.items():
        log.error("FAILED %s: %s", name, reason)
    for name, reason in result.invalid.items():
        log.error("SKIPPED %s (bad input): %s", name, reason)
    log.info(
        "%d of %d run(s) succeeded in %.0f s; outputs in %s; summary %s",
        len(complete),
        len(result.succeeded) + len(result.failed) + len(result.invalid),
        result.seconds,
        Path(ex.output_dir).resolve(),
        result.summary,
    )
    subjects = {r.subject for r in result.succeeded}
    subjects |= {n.split("_")[0].removeprefix("sub-") for n in [*result.failed, *result.invalid]}
    write_reports(Path(ex.output_dir), Path(ex.bids_dir), subjects)
    for name, reason in result.incomplete.items():
        log.error("INCOMPLETE %s: %s", name, reason)
    if result.invalid:
        return 2
    # a run whose maps are written but whose regional tables are missing (a step failed,
    # a worker died) is not a success either
    return 1 if result.failed or result.incomplete else 0


def reports_only(config) -> int:
    """``--reports-only``: rewrite the reports of the participants with outputs in
    OUTPUT_DIR (those of ``--participant-label``, else all), processing nothing."""
    output_dir = Path(config.execution.output_dir).resolve()
    if not output_dir.is_dir():
        raise QSMInputError(output_dir, "--reports-only: the output folder does not exist")
    have = sorted(p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir())
    wanted = list(config.execution.participant_label) or have
    lacking = [label for label in wanted if label not in have]
    if lacking:
        raise QSMInputError(
            output_dir,
            f"--reports-only: no outputs of participant(s) {', '.join(lacking)}; "
            f"available: {', '.join(have) or 'none'}",
        )
    if not wanted:
        raise QSMInputError(output_dir, "--reports-only: no sub-* outputs to report on")
    written = write_reports(output_dir, Path(config.execution.bids_dir), set(wanted))
    return 0 if len(written) == len(wanted) else 1


def cmd_simulate(ns) -> int:
    """``qsm-bids simulate OUT_DIR ...``"""
    from qsm_bids.simulate.dataset import simulate_dataset

    setup_logging(0)
    kwargs = {}
    if ns.echo_times:
        kwargs["echo_times_s"] = tuple(ns.echo_times)
    path = simulate_dataset(
        ns.out_dir,
        subjects=ns.subjects,
        resolution_mm=ns.resolution,
        field_strength_t=ns.field_strength,
        oblique_deg=ns.oblique,
        phase_format=ns.phase_format,
        snr=ns.snr,
        seed=ns.seed,
        phantom=ns.phantom,
        **kwargs,
    )
    log.info(
        "simulated BIDS dataset in %s (truth in %s)", path, path / "derivatives" / "qsm_bids-truth"
    )
    return 0


def cmd_invert(ns) -> int:
    """``qsm-bids invert FIELD MASK OUTPUT --unit ppm|Hz ...``"""
    from qsm_bids.cli.invert import run_invert

    setup_logging(ns.verbose, quiet=ns.quiet)
    return run_invert(ns)


def cmd_demo(ns) -> int:
    """``qsm-bids demo [OUT_DIR]``: simulate, run, and report accuracy against the truth."""
    from qsm_bids.cli.participant import run_participant_level
    from qsm_bids.config import (
        Config,
        ExecutionSettings,
        NipypeSettings,
        WorkflowSettings,
        new_run_stamp,
    )
    from qsm_bids.evaluate import evaluate_against_truth
    from qsm_bids.recipe import builtin_recipes, load_recipe
    from qsm_bids.simulate.dataset import simulate_dataset

    setup_logging(0)
    recipe = load_recipe(ns.pipeline)
    out = ns.out_dir.resolve()
    bids_dir = out / "bids"
    if not (bids_dir / "dataset_description.json").is_file():
        log.info(
            "simulating a %.1f mm %s head phantom dataset in %s",
            ns.resolution,
            ns.phantom,
            bids_dir,
        )
        simulate_dataset(
            bids_dir, subjects=1, resolution_mm=ns.resolution, seed=ns.seed, phantom=ns.phantom
        )
    output_dir = out / "derivatives" / "qsm_bids"
    log.info("running the '%s' pipeline", recipe.name)
    config = Config(
        execution=ExecutionSettings(
            bids_dir=bids_dir,
            output_dir=output_dir,
            work_dir=out / "work",
            run_stamp=new_run_stamp(),
            # the simulator's output is validated by the project's tests
            skip_bids_validation=True,
        ),
        workflow=WorkflowSettings(
            pipeline=ns.pipeline if ns.pipeline in builtin_recipes() else recipe.source
        ),
        nipype=NipypeSettings(nprocs=ns.nprocs),
    )
    result = run_participant_level(config, recipe=recipe)
    subjects = {r.subject for r in result.succeeded}
    subjects |= {n.split("_")[0].removeprefix("sub-") for n in result.failed}
    reports = write_reports(output_dir, bids_dir, subjects)
    if result.failed:
        for name, reason in result.failed.items():
            log.error("FAILED %s: %s", name, reason)
        return 1
    from qsm_bids.bids.derivatives import derivative_path

    truth_dir = bids_dir / "derivatives" / "qsm_bids-truth"
    for run in result.succeeded:
        chimap = derivative_path(output_dir, run, "Chimap")
        local_mask = derivative_path(output_dir, run, "mask", desc="local")
        ev = evaluate_against_truth(chimap, truth_dir, run.subject, mask=local_mask)
        print()
        print(f"Susceptibility map: {chimap}")
        print(f"All outputs:        {chimap.parent}")
        for report in reports:
            print(f"Report:             {report}")
        print(f"Pipeline run time:  {result.seconds:.0f} s")
        print(
            f"NRMSE against the phantom's truth: {ev.nrmse_percent:.1f} % "
            f"(brain eroded by 3 voxels, {ev.voxels} voxels, both demeaned)"
        )
        print("Deep grey-matter means (ppm, whole-brain referenced):")
        print(ev.table())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def cmd_dicom_export(ns) -> int:
    """``qsm-bids dicom-export MAP OUTPUT_DIR [--source-dicom DIR]``"""
    from qsm_bids.dicom.export import export_map

    files = export_map(
        ns.map,
        ns.output_dir,
        source_dicom=ns.source_dicom,
        series_description=ns.series_description,
    )
    print(f"wrote {len(files)} DICOM files to {ns.output_dir}")
    return 0
