"""Command-line parsers of ``qsm-bids``: the BIDS-app form and the sub-commands."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qsm_bids import __version__
from qsm_bids.cli.plugins import PLUGINS
from qsm_bids.recipe import builtin_recipes

if TYPE_CHECKING:
    from qsm_bids.config import Config

SUBCOMMANDS = ("simulate", "demo", "evaluate", "invert", "dicom-export")

DESCRIPTION = """\
qsm_bids: Quantitative Susceptibility Mapping (QSM) from multi-echo gradient-echo MRI in a
BIDS dataset. It finds each run's echoes (*_echo-<n>_part-{mag,phase}_MEGRE or _T2starw),
computes a brain mask, unwraps and combines the phase into a total field map (Hz), removes
the background field, inverts the dipole kernel into a susceptibility map (ppm), references
it, and maps R2*/T2*; the results are written as BIDS derivatives into OUTPUT_DIR.

Other commands:
  qsm-bids simulate OUT_DIR [...]   write a simulated BIDS dataset from the built-in head phantom
  qsm-bids demo [OUT_DIR]           simulate, run the pipeline and report accuracy vs. the truth
  qsm-bids evaluate CHIMAP TRUTH    score a map against a known truth (QSM challenge metrics)
  qsm-bids invert FIELD MASK OUTPUT --unit ppm|Hz
  qsm-bids dicom-export MAP OUTPUT_DIR [--source-dicom DIR]
                                    susceptibility map from a field map made by another tool
Run 'qsm-bids <command> --help' for their options.
"""


def _label(value: str) -> str:
    return value.removeprefix("sub-").removeprefix("ses-")


def _memory_mb(value: str) -> int:
    """``--mem``: a size with a unit, or a bare number of MB, in MB (implausible refused)."""
    from qsm_bids.config import parse_memory_mb
    from qsm_bids.errors import QSMInputError

    try:
        return parse_memory_mb(value)
    except QSMInputError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return number


def _segmentation_name(value: str) -> str:
    from qsm_bids.bids.segmentation import validate_segmentation_name
    from qsm_bids.errors import QSMInputError

    try:
        return validate_segmentation_name(value)
    except QSMInputError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from exc


def build_participant_parser() -> argparse.ArgumentParser:
    """Parser of the BIDS-app form ``qsm-bids BIDS_DIR OUTPUT_DIR {participant}``."""
    p = argparse.ArgumentParser(
        prog="qsm-bids",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qsm_bids {__version__}")
    p.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    p.add_argument(
        "output_dir",
        type=Path,
        help="where derivatives are written (e.g. BIDS_DIR/derivatives/qsm_bids)",
    )
    p.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="'participant': process each participant's runs independently and write a "
        "report per participant; 'group': join the participants' region tables "
        "(OUTPUT_DIR/group/)",
    )
    sel = p.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        type=_label,
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    sel.add_argument(
        "--bids-filter-file",
        type=Path,
        metavar="PATH.json",
        help="pybids filters per query, in fMRIPrep's format: a JSON object with keys "
        """megre, t2starw and t1w, e.g. '{"megre": {"acquisition": "wholebrain"}}'""",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        type=_label,
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    alg = p.add_argument_group("pipeline")
    alg.add_argument(
        "--pipeline",
        default="default",
        metavar="NAME|PATH.toml",
        help=(
            "algorithm recipe: a built-in name ("
            + ", ".join(builtin_recipes())
            + ") or a TOML file (copy one from the repository's workflows/ and edit it); "
            "default: %(default)s"
        ),
    )
    alg.add_argument(
        "--mask-file",
        type=Path,
        metavar="PATH",
        help="a brain mask (NIfTI, same grid as the data) used instead of the mask stage; "
        "only with a single run",
    )
    alg.add_argument(
        "--derivatives",
        type=Path,
        metavar="DIR",
        help="a BIDS derivatives folder holding *_desc-brain_mask.nii[.gz] per run, used "
        "instead of the mask stage",
    )
    alg.add_argument(
        "--reference-mask",
        type=Path,
        metavar="PATH",
        help="reference region (NIfTI mask on the data grid) for the recipe's "
        "[reference] algorithm = 'mask'",
    )
    alg.add_argument(
        "--phase-sign",
        choices=("auto", "1", "-1"),
        default="auto",
        type=lambda v: "1" if v == "+1" else v,
        help="phase convention: '1' phase = +2 pi f TE (the default of most scanners), "
        "'-1' the opposite (the phase is negated on reading); 'auto' checks the finished "
        "map (veins and iron-rich nuclei must come out paramagnetic) and negates the "
        "outputs if they do not. The check is reported in every sidecar. "
        "Default: %(default)s",
    )
    alg.add_argument(
        "--no-registration",
        action="store_true",
        help="skip the registration to the MNI152NLin2009aSym template, the AAL3 atlas in "
        "subject space and the AAL3 regional statistics (about a minute per run at 1 mm); "
        "a --segmentation still gives its table",
    )
    alg.add_argument(
        "--segmentation",
        type=Path,
        metavar="DIR|PATH",
        help="your own segmentation for regional statistics, in the subject's scanner space "
        "(e.g. from the same session's T1w): a BIDS derivatives folder with "
        "sub-<label>[/ses-<label>]/anat/*_dseg.nii.gz per participant (region names from a "
        "*_dseg.tsv beside it or a dseg.tsv at its root, columns index and name), or one "
        "label image when a single participant is processed. It is resampled onto the GRE "
        "grid by world coordinates (nearest neighbour, no registration) and gives "
        "<prefix>_desc-<name>_regionstats.tsv beside the AAL3 table; labels without a name "
        "are reported as label_<n> with a warning",
    )
    alg.add_argument(
        "--segmentation-name",
        type=_segmentation_name,
        metavar="NAME",
        help="the <name> of --segmentation's outputs (letters and digits); default: the "
        "file's seg-, atlas- or desc- label, else 'custom'. In a folder with several "
        "segmentations per participant it also picks the one with that label",
    )
    alg.add_argument(
        "--force-regionstats",
        action="store_true",
        help="write the AAL3 regional table even when the registration quality is below "
        "its threshold or the field of view is a slab or crop (default: skipped, with a "
        "warning saying why)",
    )
    grp = p.add_argument_group("group level")
    grp.add_argument(
        "--group-template",
        action="store_true",
        help="also average the participants' template-space maps into a study template "
        "(OUTPUT_DIR/group/space-MNI152NLin2009aSym_desc-groupmean_Chimap.nii.gz)",
    )
    res = p.add_argument_group("resources")
    res.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="nipype working directory; rerunning with the same one reuses finished "
        "stages (default: ./work)",
    )
    res.add_argument(
        "--plugin",
        choices=PLUGINS,
        default="MultiProc",
        help="nipype execution plugin: MultiProc (all cores of this machine), Linear (one "
        "node at a time), or a batch system (SLURM, SGE, PBS; the *Graph variants submit "
        "all jobs at once with dependencies). Each batch job requests the memory and cores "
        "of its node (derived from the data size). Default: %(default)s",
    )
    res.add_argument(
        "--plugin-args",
        metavar="JSON|FILE",
        help="extra plugin arguments as a JSON object or a .json/.yaml file, e.g. "
        """'{"sbatch_args": "--partition=short --time=02:00:00"}' (see docs/hpc.md)""",
    )
    res.add_argument(
        "--nprocs",
        "--n-cpus",
        type=int,
        default=0,
        metavar="N",
        help="CPU cores to use in all (default: all available)",
    )
    res.add_argument(
        "--omp-nthreads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="threads per FFT-heavy step (default: the cores shared between the runs)",
    )
    mem = res.add_mutually_exclusive_group()
    mem.add_argument(
        "--mem",
        "--mem-mb",
        dest="mem",
        type=_memory_mb,
        default=0,
        metavar="SIZE",
        help="memory limit for the scheduler with a unit (16GB, 16000MB); a bare number is "
        "MB, as in fMRIPrep (default: 90%% of the machine's)",
    )
    mem.add_argument(
        "--mem-gb",
        type=float,
        default=0.0,
        metavar="G",
        help="the memory limit in GB instead (a number, e.g. 15.5)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--config-file",
        type=Path,
        metavar="PATH.toml",
        help="settings as written to OUTPUT_DIR/logs/config-<time>.toml by an earlier run "
        "(repeats it); options given on the command line override the file",
    )
    run.add_argument(
        "--skip-bids-validation",
        action="store_true",
        help="do not run the BIDS validator on the input (its findings are only reported, "
        "never block the run)",
    )
    run.add_argument(
        "--stop-on-first-crash",
        action="store_true",
        help="stop everything at the first failing step (default: the other runs go on)",
    )
    run.add_argument(
        "--reports-only",
        action="store_true",
        help="process nothing: rewrite the participants' HTML reports from the outputs in "
        "OUTPUT_DIR",
    )
    run.add_argument(
        "--boilerplate-only",
        action="store_true",
        help="process nothing: write the methods text with references "
        "(OUTPUT_DIR/logs/CITATION.md and .bib) for these settings",
    )
    run.add_argument(
        "--random-seed",
        type=_non_negative_int,
        metavar="N",
        help="seed of numpy's random generator and of ANTs (ANTS_RANDOM_SEED) for "
        "repeatable results; recorded in the config",
    )
    out = p.add_argument_group("messages")
    out.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages (-vv: nipype's too)"
    )
    out.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings, errors and the final summary"
    )
    return p


def parse_participant_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the BIDS-app form; ``ns.explicit`` is the set of option destinations given on
    the command line (they override ``--config-file``)."""
    parser = build_participant_parser()
    ns = parser.parse_args(argv)
    # the same parser with every default suppressed: only what was typed is set
    for action in parser._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    ns.explicit = frozenset(vars(parser.parse_args(argv)))
    return ns


#: namespace destination -> (config section, key) where the value is copied unchanged
_PLAIN_OPTIONS = {
    "bids_dir": ("execution", "bids_dir"),
    "output_dir": ("execution", "output_dir"),
    "work_dir": ("execution", "work_dir"),
    "participant_label": ("execution", "participant_label"),
    "session_label": ("execution", "session_label"),
    "skip_bids_validation": ("execution", "skip_bids_validation"),
    "reports_only": ("execution", "reports_only"),
    "boilerplate_only": ("execution", "boilerplate_only"),
    "stop_on_first_crash": ("execution", "stop_on_first_crash"),
    "random_seed": ("execution", "random_seed"),
    "verbose": ("execution", "verbose"),
    "quiet": ("execution", "quiet"),
    "pipeline": ("workflow", "pipeline"),
    "mask_file": ("workflow", "mask_file"),
    "derivatives": ("workflow", "derivatives"),
    "reference_mask": ("workflow", "reference_mask"),
    "phase_sign": ("workflow", "phase_sign"),
    "segmentation": ("workflow", "segmentation"),
    "segmentation_name": ("workflow", "segmentation_name"),
    "force_regionstats": ("workflow", "force_regionstats"),
    "group_template": ("workflow", "group_template"),
    "plugin": ("nipype", "plugin"),
    "nprocs": ("nipype", "nprocs"),
    "omp_nthreads": ("nipype", "omp_nthreads"),
}

#: paths written into the config as absolute paths (the config repeats the run from any
#: working directory)
_PATH_KEYS = ("bids_dir", "output_dir", "work_dir", "mask_file", "derivatives",
              "reference_mask", "segmentation")  # fmt: skip


def config_from_args(ns: argparse.Namespace) -> Config:
    """The one :class:`~qsm_bids.config.Config` of a participant-level invocation.

    With ``--config-file`` the file gives the settings and the options typed on the command
    line (``ns.explicit``, see :func:`parse_participant_args`; all of them when absent)
    override it. Relative paths are made absolute, ``--bids-filter-file`` is read and
    checked, and ``execution.run_stamp`` is new: the UTC time and 8 random hexadecimal
    digits (``20261208-012345_1a2b3c4d``, as fMRIPrep's run id), so that invocations
    started in the same second (an array job) write their own config and log files.

    Raises
    ------
    QSMInputError
        An unreadable or invalid config file, BIDS filter file or plugin argument,
        naming the file.
    """
    from qsm_bids.bids.layout import load_bids_filters
    from qsm_bids.cli.plugins import load_plugin_args
    from qsm_bids.config import Config, new_run_stamp

    config_file = getattr(ns, "config_file", None)
    # without a config file every option counts (its default included)
    given = getattr(ns, "explicit", None) if config_file is not None else None

    def typed(dest: str) -> bool:
        return (given is None or dest in given) and hasattr(ns, dest)

    values: dict[str, dict] = {"execution": {}, "workflow": {}, "nipype": {}}
    for dest, (section, key) in _PLAIN_OPTIONS.items():
        if dest in ("bids_dir", "output_dir") or typed(dest):
            value = getattr(ns, dest)
            if value is not None and (
                key in _PATH_KEYS or (key == "pipeline" and str(value).endswith(".toml"))
            ):
                value = Path(value).expanduser().resolve()
                value = str(value) if key == "pipeline" else value
            values[section][key] = value
    if typed("no_registration"):
        values["workflow"]["registration"] = not ns.no_registration
    if typed("bids_filter_file") and ns.bids_filter_file is not None:
        values["execution"]["bids_filters"] = load_bids_filters(ns.bids_filter_file)
    if typed("plugin_args") and ns.plugin_args:
        values["nipype"]["plugin_args"] = load_plugin_args(ns.plugin_args)
    if typed("mem") and ns.mem:
        values["nipype"]["mem_mb"] = int(ns.mem)
    if typed("mem_gb") and ns.mem_gb:
        values["nipype"]["mem_mb"] = max(1, int(round(ns.mem_gb * 1024)))
    if typed("verbose"):
        values["nipype"]["verbose_nipype"] = ns.verbose > 1
    values["execution"]["run_stamp"] = f"{new_run_stamp()}_{uuid.uuid4().hex[:8]}"
    values = {k: {n: v for n, v in d.items() if v is not None} for k, d in values.items()}
    if config_file is not None:
        config = Config.from_toml(Path(config_file).expanduser().resolve(), overrides=values)
        if config.execution.bids_filters:  # filters written by hand are checked too
            from qsm_bids.bids.layout import check_bids_filters

            check_bids_filters(config.execution.bids_filters, config.execution.config_file)
        return config
    return Config.from_dict(values)


def build_simulate_parser() -> argparse.ArgumentParser:
    """Parser of ``qsm-bids simulate``."""
    p = argparse.ArgumentParser(
        prog="qsm-bids simulate",
        description=(
            "Write a simulated multi-echo GRE BIDS dataset from the built-in head phantom "
            "(MNI152 tissue classes, AAL3 deep grey nuclei, veins, air sinus), with the true "
            "susceptibility, masks and labels as a derivative under "
            "OUT_DIR/derivatives/qsm_bids-truth."
        ),
    )
    p.add_argument("out_dir", type=Path, help="folder for the new BIDS dataset")
    p.add_argument("--subjects", type=int, default=1, help="number of subjects (default: 1)")
    p.add_argument(
        "--resolution",
        type=float,
        default=2.0,
        metavar="MM",
        help="isotropic voxel size, mm (default: 2)",
    )
    p.add_argument(
        "--field-strength", type=float, default=3.0, metavar="T", help="B0 in tesla (default: 3)"
    )
    p.add_argument(
        "--echo-times",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="echo times in seconds (default: 0.004 0.012 0.020 0.028)",
    )
    p.add_argument(
        "--oblique",
        type=float,
        default=0.0,
        metavar="DEG",
        help="tilt of the acquisition grid against B0, degrees (default: 0)",
    )
    p.add_argument(
        "--phase-format",
        choices=["radians", "integer"],
        default="radians",
        help="store phase in radians or as dcm2niix-style integers -4096..4095",
    )
    p.add_argument(
        "--snr",
        type=float,
        default=None,
        help=(
            "first-echo SNR over the noise SD per channel: white-matter magnitude "
            "(realistic phantom) or brain-mean proton density (ideal) (default: 40 "
            "realistic, 100 ideal)"
        ),
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_phantom_argument(p)
    return p


def _add_phantom_argument(p: argparse.ArgumentParser) -> None:
    """``--phantom realistic|ideal`` of ``simulate`` and ``demo``."""
    p.add_argument(
        "--phantom",
        choices=["realistic", "ideal"],
        default="realistic",
        help=(
            "realistic (default): structure on a 2x finer grid (folding, small veins, iron "
            "gradients, white-matter microstructure), field and signal computed there and "
            "k-space truncated to the acquired grid; ideal: the old piecewise-smooth phantom "
            "simulated with the pipeline's own dipole kernel on the acquired grid (the "
            "'inverse crime': its accuracy flatters weak regularisation)"
        ),
    )


def build_demo_parser() -> argparse.ArgumentParser:
    """Parser of ``qsm-bids demo``."""
    p = argparse.ArgumentParser(
        prog="qsm-bids demo",
        description=(
            "Simulate a small BIDS dataset from the built-in head phantom, run the participant "
            "pipeline on it, and report how close the susceptibility map is to the truth "
            "(NRMSE %% and the mean of each deep grey-matter region)."
        ),
    )
    p.add_argument(
        "out_dir",
        type=Path,
        nargs="?",
        default=Path("qsm_bids_demo"),
        help="folder for the demo (default: ./qsm_bids_demo)",
    )
    p.add_argument(
        "--resolution", type=float, default=2.0, metavar="MM", help="voxel size, mm (default: 2)"
    )
    p.add_argument(
        "--pipeline", default="default", metavar="NAME|PATH.toml", help="recipe (default: default)"
    )
    p.add_argument("--nprocs", type=int, default=0, metavar="N", help="CPU cores (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the phantom (default: 0)")
    _add_phantom_argument(p)
    return p


def build_evaluate_parser() -> argparse.ArgumentParser:
    """Parser of ``qsm-bids evaluate``."""
    from qsm_bids.cli.evaluate import DESCRIPTION as EVAL_DESCRIPTION
    from qsm_bids.cli.evaluate import add_evaluate_arguments

    p = argparse.ArgumentParser(prog="qsm-bids evaluate", description=EVAL_DESCRIPTION)
    add_evaluate_arguments(p)
    return p


def build_invert_parser() -> argparse.ArgumentParser:
    """Parser of ``qsm-bids invert``."""
    from qsm_bids.cli.invert import DESCRIPTION as INVERT_DESCRIPTION
    from qsm_bids.cli.invert import add_invert_arguments

    p = argparse.ArgumentParser(prog="qsm-bids invert", description=INVERT_DESCRIPTION)
    add_invert_arguments(p)
    return p


def build_dicom_export_parser() -> argparse.ArgumentParser:
    """Parser of ``qsm-bids dicom-export``."""
    p = argparse.ArgumentParser(
        prog="qsm-bids dicom-export",
        description="Write a 3D map (e.g. a Chimap in ppm) as a DICOM MR series for PACS viewers.",
    )
    p.add_argument("map", type=Path, help="the NIfTI map (ppm)")
    p.add_argument("output_dir", type=Path, help="folder for the DICOM files (created)")
    p.add_argument(
        "--source-dicom", type=Path, default=None, help="source series: keep its patient and study"
    )
    p.add_argument("--series-description", default=None)
    return p
