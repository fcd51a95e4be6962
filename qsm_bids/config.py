"""One settings object for a participant-level run (the niworkflows/fMRIPrep pattern).

A :class:`Config` is made once, from the command line (:meth:`Config.from_namespace`)
or from a TOML file (``--config-file``, :meth:`Config.from_toml`, the command line
overriding what the file sets), validated, and passed to the workflow builders. Every
run writes it to ``OUTPUT_DIR/logs/config-<timestamp>.toml`` (:meth:`Config.write`), so
that ``qsm-bids BIDS_DIR OUTPUT_DIR participant --config-file THAT.toml`` repeats it.

Three sections, as in fMRIPrep's ``config.toml``:

``[execution]``
    what to process and where: folders, participant/session selection, BIDS filters,
    validation, report/boilerplate-only modes, crash handling, random seed.
``[workflow]``
    what the pipeline does: the recipe, user masks and segmentations, the phase sign,
    registration and regional statistics.
``[nipype]``
    how it runs: the plugin and its arguments, cores, threads per node, memory.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qsm_bids.errors import QSMInputError

#: the smallest and largest ``--mem`` accepted, in MB (below: surely a unit mistake,
#: e.g. ``--mem 16`` meant as GB; above: more than any node has)
MEM_MB_MIN = 512
MEM_MB_MAX = 64 * 1024**2  # 64 TB

_MEM = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*$")
_UNIT_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}


def parse_memory_mb(value: str | float | int) -> int:
    """Memory given as ``16GB``, ``16000MB``, ``16G``, ``0.5TB`` or a bare number (MB, as
    fMRIPrep reads ``--mem``), in MB.

    Raises
    ------
    QSMInputError
        Not a size, or implausible (below :data:`MEM_MB_MIN` or above :data:`MEM_MB_MAX`).
    """
    match = _MEM.match(str(value))
    if match is None:
        raise QSMInputError(None, f"--mem {value!r}: not a memory size (e.g. 16GB, 16000MB)")
    mb = float(match.group(1)) * _UNIT_MB[match.group(2).lower()]
    if not MEM_MB_MIN <= mb <= MEM_MB_MAX:
        raise QSMInputError(
            None,
            f"--mem {value!r} is {mb / 1024:.3g} GB: implausible (a bare number is read as "
            "MB, as fMRIPrep reads it; write the unit, e.g. 16GB or 16000MB)",
        )
    return int(round(mb))


@dataclass(frozen=True)
class ExecutionSettings:
    """What to process and where (``[execution]``)."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path = Path("work")
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    #: pybids filters per query (fMRIPrep's ``--bids-filter-file`` format), e.g.
    #: ``{"megre": {"acquisition": "wholebrain"}, "t1w": {"session": "A"}}``
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip_bids_validation: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    stop_on_first_crash: bool = False
    random_seed: int | None = None
    verbose: int = 0
    quiet: bool = False
    #: when this configuration was made (UTC, ``YYYYmmdd-HHMMSS``): names the config and
    #: log files of the run
    run_stamp: str = ""
    #: the file read with ``--config-file``, if any
    config_file: Path | None = None


@dataclass(frozen=True)
class WorkflowSettings:
    """What the pipeline does (``[workflow]``)."""

    #: a built-in recipe name or a TOML file (``--pipeline``)
    pipeline: str = "default"
    mask_file: Path | None = None
    derivatives: Path | None = None
    reference_mask: Path | None = None
    phase_sign: str = "auto"
    registration: bool = True
    segmentation: Path | None = None
    segmentation_name: str | None = None
    #: write the AAL3 regional table even where the registration quality is below its
    #: threshold or the field of view is a slab/crop (``--force-regionstats``)
    force_regionstats: bool = False
    group_template: bool = False


@dataclass(frozen=True)
class NipypeSettings:
    """How it runs (``[nipype]``)."""

    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    #: cores in all; 0 = all available
    nprocs: int = 0
    #: threads per FFT-heavy node; 0 = the cores shared between the runs
    omp_nthreads: int = 0
    #: memory limit in MB; 0 = 90 % of the machine's
    mem_mb: int = 0
    verbose_nipype: bool = False


_SECTIONS = {"execution": ExecutionSettings, "workflow": WorkflowSettings, "nipype": NipypeSettings}


@dataclass(frozen=True)
class Config:
    """The settings of one participant-level invocation; see the module docstring."""

    execution: ExecutionSettings
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    nipype: NipypeSettings = field(default_factory=NipypeSettings)

    # ------------------------------------------------------------------ derived values
    @property
    def recipe(self):
        """The validated :class:`~qsm_bids.recipe.Recipe` named by ``workflow.pipeline``."""
        from qsm_bids.recipe import load_recipe

        return load_recipe(self.workflow.pipeline)

    @property
    def mem_gb(self) -> float:
        """``nipype.mem_mb`` in GB (0 = not set)."""
        return self.nipype.mem_mb / 1024.0

    def with_updates(self, section: str, **values: Any) -> Config:
        """A copy with ``values`` replaced in ``section`` (``"execution"``, ...)."""
        return replace(self, **{section: replace(getattr(self, section), **values)})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> Config:
        """Build and type-check a config from ``{"execution": {...}, ...}``.

        Raises
        ------
        QSMInputError
            Unknown section or key, or a value of the wrong type (naming ``source``).
        """
        kwargs = {}
        for name, section in data.items():
            if name not in _SECTIONS:
                raise QSMInputError(source, f"unknown config section [{name}]")
            if not isinstance(section, dict):
                raise QSMInputError(source, f"config section [{name}] must be a table")
            kwargs[name] = _section(_SECTIONS[name], section, name, source)
        if "execution" not in kwargs:
            raise QSMInputError(source, "the config has no [execution] section")
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
        """Read a config written by :meth:`write` (or by hand); ``overrides`` (per section)
        replace what the file says."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise QSMInputError(path, "--config-file not found") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise QSMInputError(path, f"--config-file is not valid TOML ({exc})") from exc
        for name, values in (overrides or {}).items():
            data.setdefault(name, {}).update(values)
        data.setdefault("execution", {})["config_file"] = str(path)
        return cls.from_dict(data, source=path)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain TOML-able values (paths as strings, ``None`` left out)."""
        out = {}
        for name in _SECTIONS:
            section = asdict(getattr(self, name))
            out[name] = {k: _plain(v) for k, v in section.items() if v is not None}
        return out

    def to_toml(self) -> str:
        """The config as TOML text that :meth:`from_toml` reads back to an equal config."""
        lines = ["# qsm_bids configuration: rerun with --config-file THIS_FILE"]
        for name, values in self.to_dict().items():
            lines.append(f"\n[{name}]")
            nested = {k: v for k, v in values.items() if isinstance(v, dict)}
            for key, value in values.items():
                if key not in nested:
                    lines.append(f"{key} = {_toml_value(value)}")
            for key, value in nested.items():
                lines.append(f"{key} = {_toml_inline_table(value)}")
        return "\n".join(lines) + "\n"

    def write(self, log_dir: Path) -> Path:
        """Write ``log_dir/config-<run_stamp>.toml`` atomically; returns its path."""
        from qsm_bids.bids.derivatives import write_text_atomic

        stamp = self.execution.run_stamp or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = Path(log_dir) / f"config-{stamp}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.to_toml())


def new_run_stamp() -> str:
    """The current UTC time as ``YYYYmmdd-HHMMSS`` (names config and log files)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


# -------------------------------------------------------------------------- helpers
def _section(cls, values: dict[str, Any], name: str, source) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise QSMInputError(source, f"unknown config key {key!r} in [{name}]")
        kwargs[key] = _coerce(known[key].type, value, f"[{name}] {key}", source)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key missing
        raise QSMInputError(source, f"config section [{name}]: {exc}") from exc


def _coerce(annotation: str, value: Any, what: str, source) -> Any:
    """Convert a TOML/argparse value to the field's declared type (annotations are
    strings here because of ``from __future__ import annotations``)."""
    kind = annotation.replace(" ", "")
    optional = kind.endswith("|None")
    kind = kind.removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise QSMInputError(source, f"config {what} must not be empty")
    try:
        if kind == "Path":
            return Path(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind.startswith("tuple[str"):
            if isinstance(value, str):
                value = [value]
            return tuple(str(v) for v in value)
        if kind.startswith("dict"):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(source, f"config {what}: {value!r} is not a valid {kind}") from exc
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _toml_inline_table(value)
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_inline_table(value: dict[str, Any]) -> str:
    items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
    return "{" + items + "}"
