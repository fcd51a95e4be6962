"""Pipeline recipes: which algorithm, with which parameters, for each stage.

A recipe is a TOML file with one table per stage::

    [pipeline]
    description = "what this recipe is for"

    [inversion]
    algorithm = "tv_admm"
    lambda_ = 2e-4

Parameters left out take the algorithm's defaults (its function signature). Built-in
recipes live in the repository's ``workflows/`` folder (installed as
``qsm_bids/recipes``); ``--pipeline NAME`` picks one, ``--pipeline PATH.toml`` reads a file.
Everything is validated here, before any data is touched.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qsm_bids import registry
from qsm_bids.errors import RecipeError

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class StageChoice:
    """The algorithm chosen for one stage and its full, resolved parameter set."""

    stage: str
    algorithm: str
    params: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """``{"Algorithm": ..., "Parameters": {...}}`` for a JSON sidecar."""
        return {
            "Algorithm": self.algorithm,
            "Parameters": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()
            },
        }

    def with_max_iter_from(self, parameter: str) -> StageChoice:
        """This choice with ``max_iter`` set to the value of the pipeline-level
        ``parameter`` (``feedback_max_iter``, ``preliminary_max_iter``) when that is
        positive and the algorithm has a ``max_iter``; otherwise this choice."""
        n = int(self.params.get(parameter, 0))
        if n > 0 and "max_iter" in self.params:
            return replace(self, params={**self.params, "max_iter": n})
        return self


@dataclass(frozen=True)
class Recipe:
    """A validated pipeline recipe."""

    name: str
    source: str
    description: str
    stages: dict[str, StageChoice]

    def __getitem__(self, stage: str) -> StageChoice:
        return self.stages[stage]

    def provenance(self) -> dict[str, Any]:
        """Every stage's algorithm and parameters, keyed by stage name."""
        return {
            "Pipeline": self.name,
            **{s: c.provenance() for s, c in self.stages.items()},
        }


def builtin_recipes() -> list[str]:
    """Names of the recipes that ship with qsm_bids."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe by built-in name or by path.

    Raises
    ------
    RecipeError
        Unknown recipe, unreadable TOML, unknown stage, algorithm or parameter, or a
        parameter of the wrong type; the message names the file and the problem.
    """
    text = str(name_or_path)
    path = Path(text)
    if not text.endswith(".toml") and not path.exists():
        path = RECIPE_DIR / f"{text}.toml"
        if not path.exists():
            raise RecipeError(
                None,
                f"unknown pipeline {text!r}; built-in pipelines: {', '.join(builtin_recipes())}"
                " (or give the path to a .toml recipe)",
            )
    if not path.is_file():
        raise RecipeError(path, "recipe file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(path, f"not valid TOML: {exc}") from exc
    return parse_recipe(data, name=path.stem, source=str(path))


def parse_recipe(data: dict[str, Any], *, name: str = "custom", source: str = "<dict>") -> Recipe:
    """Validate a recipe given as a dict (the parsed TOML); see :func:`load_recipe`."""
    data = dict(data)
    meta = data.pop("pipeline", {})
    if not isinstance(meta, dict):
        raise RecipeError(Path(source), "[pipeline] must be a table")
    unknown = sorted(set(data) - set(registry.STAGES))
    if unknown:
        raise RecipeError(
            Path(source),
            f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join(registry.STAGES)}",
        )
    stages: dict[str, StageChoice] = {}
    for stage in registry.STAGES:
        table = data.get(stage)
        if table is None:
            raise RecipeError(Path(source), f"missing table [{stage}] (it must name an algorithm)")
        if not isinstance(table, dict):
            raise RecipeError(Path(source), f"[{stage}] must be a table")
        table = dict(table)
        algorithm = table.pop("algorithm", None)
        if algorithm not in registry.STAGES[stage][1]:
            raise RecipeError(
                Path(source),
                f"[{stage}] algorithm {algorithm!r} is unknown; choose one of: "
                f"{', '.join(registry.algorithms(stage))}",
            )
        try:
            params = registry.resolve(stage, algorithm, table)
        except ValueError as exc:
            raise RecipeError(Path(source), str(exc)) from exc
        stages[stage] = StageChoice(stage, algorithm, params)
    return Recipe(
        name=str(meta.get("name", name)),
        source=source,
        description=str(meta.get("description", "")),
        stages=stages,
    )
