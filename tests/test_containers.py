"""Static checks of the container recipes (Dockerfile, singularity.def); nothing is built.

The image itself is built and run by ``scripts/container_check.sh`` (podman).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY_DEF = ROOT / "singularity.def"

# Section names Apptainer/Singularity knows; anything else is silently ignored by them.
KNOWN_SECTIONS = {
    "setup",
    "files",
    "environment",
    "post",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
    "arguments",
    "app",
    "appinstall",
    "appenv",
    "apprun",
    "applabels",
    "appfiles",
    "apphelp",
    "apptest",
    "appstart",
}
BOOTSTRAP_AGENTS = {"docker", "docker-daemon", "docker-archive", "oci", "oci-archive"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|gfortran|cc|make|cmake)\b")


# --------------------------------------------------------------------------------------
# Plain parsers
# --------------------------------------------------------------------------------------


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header (``Key: value``) and sections (``%name`` -> body) of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\b(.*)$", line)
        if m:
            name = m.group(1).lower()
            assert name not in sections, f"section %{name} appears twice"
            current = sections[name] = []
            continue
        if current is not None:
            current.append(line)
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, sep, value = stripped.partition(":")
            assert sep, f"header line without 'Key: value': {line!r}"
            header[key.strip().lower()] = value.strip()
    return header, {k: "\n".join(v) for k, v in sections.items()}


def script_lines(body: str) -> list[str]:
    """Non-empty, non-comment lines of a section's shell script."""
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a continuation line"
    return instructions


def split_stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each group starts with its FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


@pytest.fixture(scope="module")
def definition() -> tuple[dict[str, str], dict[str, str]]:
    return parse_definition(SINGULARITY_DEF.read_text())


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


# --------------------------------------------------------------------------------------
# singularity.def
# --------------------------------------------------------------------------------------


def test_definition_header_bootstraps_from_the_image(definition):
    header, _ = definition
    assert header["bootstrap"] in BOOTSTRAP_AGENTS
    assert "qsm_bids" in header["from"]


def test_definition_has_only_known_sections(definition):
    _, sections = definition
    assert set(sections) <= KNOWN_SECTIONS, set(sections) - KNOWN_SECTIONS
    assert {"runscript", "test", "help"} <= set(sections)


def test_runscript_execs_qsm_bids_with_all_arguments(definition):
    _, sections = definition
    lines = script_lines(sections["runscript"])
    assert lines, "empty %runscript"
    assert shlex.split(lines[-1]) == ["exec", "qsm-bids", "$@"]
    assert lines[-1].endswith('"$@"'), "arguments must be passed quoted"


def test_test_section_runs_version(definition):
    _, sections = definition
    commands = [shlex.split(ln) for ln in script_lines(sections["test"])]
    assert ["qsm-bids", "--version"] in commands


def test_help_explains_cleanenv_and_bind_mounts(definition):
    _, sections = definition
    text = sections["help"]
    assert "--cleanenv" in text
    assert re.search(r"-B /data:/data", text)
    assert "bind" in text.lower()
    example = re.search(r"apptainer run --cleanenv -B \S+ qsm_bids\.sif[^\n]*", text)
    assert example, "no example `apptainer run --cleanenv -B ... qsm_bids.sif` in %help"
    assert "participant" in text and "--participant-label" in text


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


def test_dockerfile_is_multistage_with_a_build_stage(stages):
    froms = [stage[0][1] for stage in stages]
    assert len(stages) >= 2
    assert re.fullmatch(r"\$\{?BASE\}? AS build", froms[0], flags=re.IGNORECASE), froms[0]
    final_from = froms[-1].split()
    assert final_from[-1].lower() != "build"
    assert final_from[0] in {"${BASE}", "$BASE"}, "final stage must use the same base"


def test_dockerfile_base_and_pip_cert_arguments():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    args = [a for k, a in instructions if k == "ARG"]
    assert "BASE=python:3.11-slim" in args
    assert any(a.split("=")[0] == "PIP_CERT" for a in args)


def test_final_stage_copies_the_venv_and_has_no_compilers(stages):
    final = stages[-1]
    copies = [a for k, a in final if k == "COPY"]
    assert any(a.startswith("--from=build ") for a in copies)
    assert all(a.startswith("--from=build ") for a in copies), "final stage copies sources"
    for keyword, args in final:
        if keyword == "RUN":
            assert not COMPILERS.search(args), f"compiler in the final stage: {args}"


def test_final_stage_runs_as_non_root(stages):
    users = [a for k, a in stages[-1] if k == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_entrypoint_and_cmd(stages):
    final = dict(stages[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["qsm-bids"]
    assert json.loads(final["CMD"]) == ["--help"]


def test_runtime_environment_and_labels(stages):
    text = " ".join(a for k, a in stages[-1] if k == "ENV")
    for setting in (
        "NIPYPE_NO_ET=1",
        "OMP_NUM_THREADS=1",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1",
        "MPLCONFIGDIR=/tmp",
        "NUMBA_CACHE_DIR=/tmp/numba",
    ):
        assert setting in text.split(), setting
    labels = " ".join(a for k, a in stages[-1] if k == "LABEL")
    for key in ("version", "source", "title", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dockerignore_keeps_what_the_build_copies():
    # qsm_bids/recipes is a symlink to ../workflows: both must be in the build context.
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    for needed in ("pyproject.toml", "README.md", "qsm_bids", "workflows"):
        assert f"!{needed}" in lines or "*" not in lines, needed
    assert (ROOT / "qsm_bids" / "recipes").resolve() == (ROOT / "workflows").resolve()


# --------------------------------------------------------------------------------------
# The parsers themselves
# --------------------------------------------------------------------------------------


def test_parsers_on_small_examples():
    header, sections = parse_definition(
        'Bootstrap: docker\nFrom: x\n%runscript\n    exec qsm-bids "$@"\n%test\n  true\n'
    )
    assert header == {"bootstrap": "docker", "from": "x"}
    assert script_lines(sections["runscript"]) == ['exec qsm-bids "$@"']
    ins = parse_dockerfile(
        "FROM a AS build\nRUN apt-get install \\\n  gcc\nFROM a\nUSER u\n# RUN make\n"
    )
    assert ins[1] == ("RUN", "apt-get install gcc")
    st = split_stages(ins)
    assert len(st) == 2 and COMPILERS.search(st[0][1][1])
    assert not any(COMPILERS.search(a) for k, a in st[1] if k == "RUN")
