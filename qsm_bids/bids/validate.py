"""Run the official BIDS validator (schema validator 3, ``bids-validator-deno``) offline.

:func:`validate_dataset` runs the validator on a folder and returns its errors and warnings
as :class:`Issue` objects. The validator is the Deno bundle of the ``bids-validator-deno``
package, found in this Python environment or on ``PATH``. Where its Python package is
importable (the usual case: it is a dependency of qsm_bids) the bundle is run by Deno with
``--deny-net`` (read and environment access only), so nothing can reach the network even
for a DataLad dataset whose files are not fetched; otherwise the ``bids-validator-deno``
command is run. Either way it validates against the schema bundled with it: no
``--schema`` option is passed and ``BIDS_SCHEMA`` (which names a schema URL to download) is
removed from its environment.

What the validator reports is advice about the dataset's BIDS compliance, not a verdict on
whether qsm_bids can process it: a phase sidecar without ``Units`` (as dcm2niix writes it)
is an error for the validator, while qsm_bids reads such phase from its value range.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qsm_bids.errors import QSMInputError

#: Name of the validator's command (``bids-validator-deno`` on PyPI).
VALIDATOR_COMMAND = "bids-validator-deno"
#: Files listed per issue code in :meth:`ValidationResult.summary_lines`.
FILES_PER_CODE = 3


@dataclass(frozen=True)
class Issue:
    """One issue reported by the BIDS validator.

    Attributes
    ----------
    code : str
        The validator's code, e.g. ``"SIDECAR_KEY_REQUIRED"``; with its sub-code where it
        has one (``"SIDECAR_KEY_REQUIRED Units"``).
    severity : str
        ``"error"`` or ``"warning"`` (``"ignore"`` issues are not kept).
    location : str
        The file or folder, relative to the dataset root with a leading ``/``
        (``"/sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"``); empty when the issue
        is about the dataset as a whole.
    message : str
        What is wrong: the issue's own message, else the validator's text for its code.
    """

    code: str
    severity: str
    location: str
    message: str


@dataclass
class ValidationResult:
    """Errors and warnings of one validator run.

    Attributes
    ----------
    errors : list of Issue
        Issues of severity ``"error"``.
    warnings : list of Issue
        Issues of severity ``"warning"``.
    """

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """One line per issue code, errors first: severity, code, count and up to
        :data:`FILES_PER_CODE` files, e.g. ``"error SIDECAR_KEY_REQUIRED Units: 4 files
        (/sub-01/anat/a.nii.gz, /sub-01/anat/b.nii.gz, /sub-01/anat/c.nii.gz, ...)"``."""
        lines = []
        for severity, issues in (("error", self.errors), ("warning", self.warnings)):
            by_code: dict[str, list[str]] = {}
            for issue in issues:
                by_code.setdefault(issue.code, []).append(issue.location)
            for code, locations in by_code.items():
                files = list(dict.fromkeys(loc for loc in locations if loc))
                text = f"{severity} {code}: {len(locations)} issue"
                text += "" if len(locations) == 1 else "s"
                if files:
                    shown = ", ".join(files[:FILES_PER_CODE])
                    more = ", ..." if len(files) > FILES_PER_CODE else ""
                    text += f" ({shown}{more})"
                lines.append(text)
        return lines


def find_validator() -> list[str] | None:
    """The command that runs the BIDS validator, without network access where possible.

    Returns
    -------
    list of str or None
        ``[deno, "run", "--allow-read", "--allow-env", "--deny-net", "--no-prompt",
        bundle]`` when the ``bids_validator_deno`` and ``deno`` packages are importable;
        else the ``bids-validator-deno`` command next to :data:`sys.executable` or on
        ``PATH``; ``None`` when there is none.
    """
    try:
        import bids_validator_deno
        from deno import find_deno_bin

        bundle = Path(bids_validator_deno.__file__).with_name("bids-validator.js")
        deno = Path(os.fsdecode(find_deno_bin()))
        if bundle.is_file() and deno.is_file():
            return [
                str(deno), "run", "--allow-read", "--allow-env", "--deny-net", "--no-prompt",
                str(bundle),
            ]  # fmt: skip
    except (ImportError, OSError, AttributeError):
        pass
    beside = Path(sys.executable).with_name(VALIDATOR_COMMAND)
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(VALIDATOR_COMMAND)
    return [found] if found else None


def parse_report(report: dict) -> ValidationResult:
    """Issues of the validator's JSON output (``--json``).

    Parameters
    ----------
    report : dict
        ``{"issues": {"issues": [{"code", "subCode", "severity", "location",
        "issueMessage"}, ...], "codeMessages": {code: text}}, "summary": {...}}``.

    Returns
    -------
    ValidationResult
        Errors and warnings in the validator's order.
    """
    block = report.get("issues", {})
    messages = block.get("codeMessages", {}) or {}
    result = ValidationResult()
    for item in block.get("issues", []) or []:
        severity = str(item.get("severity", "error"))
        if severity not in ("error", "warning"):
            continue
        code = str(item.get("code", "UNKNOWN"))
        if item.get("subCode"):
            code += f" {item['subCode']}"
        message = item.get("issueMessage") or messages.get(item.get("code"), "")
        issue = Issue(
            code=code,
            severity=severity,
            location=str(item.get("location") or ""),
            message=" ".join(str(message).split()),
        )
        (result.errors if severity == "error" else result.warnings).append(issue)
    return result


def validate_dataset(
    path: Path, *, timeout_s: float = 300, extra_args: Sequence[str] = ()
) -> ValidationResult:
    """Validate a BIDS dataset (raw or derivative) with the official BIDS validator.

    Parameters
    ----------
    path : Path
        The dataset's root folder.
    timeout_s : float, default 300
        Longest time the validator may take (s); about a second for a small dataset.
    extra_args : sequence of str, default ()
        More validator options (e.g. ``["--ignoreNiftiHeaders"]``).

    Returns
    -------
    ValidationResult
        Its errors and warnings.

    Raises
    ------
    QSMInputError
        Naming ``path``: the folder does not exist, the validator is not installed, or it
        crashed, timed out or printed no readable report.
    """
    path = Path(path)
    if not path.is_dir():
        raise QSMInputError(path, "BIDS validation: not a folder")
    command = find_validator()
    if command is None:
        raise QSMInputError(
            path,
            f"BIDS validation: the validator ({VALIDATOR_COMMAND}) is not installed; "
            "pip install bids-validator-deno, or skip the validation",
        )
    env = {k: v for k, v in os.environ.items() if k != "BIDS_SCHEMA"}  # no schema download
    env["DENO_NO_UPDATE_CHECK"] = "1"
    env["NO_COLOR"] = "1"
    argv = [*command, str(path.resolve()), "--json", *extra_args]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise QSMInputError(path, f"BIDS validation: no answer in {timeout_s:g} s") from exc
    except OSError as exc:
        raise QSMInputError(path, f"BIDS validation: cannot run {argv[0]} ({exc})") from exc
    try:  # exit status 16 (errors found) and 0 both come with a report
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict) or "issues" not in report:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise QSMInputError(
            path,
            f"BIDS validation: the validator failed (exit status {proc.returncode}"
            + (f": {detail[-1][:300]}" if detail else "")
            + ")",
        )
    return parse_report(report)
