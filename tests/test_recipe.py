"""Recipes and the algorithm registry: every built-in recipe is valid, errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsm_bids import registry
from qsm_bids.errors import RecipeError
from qsm_bids.recipe import builtin_recipes, load_recipe, parse_recipe


def test_every_registered_algorithm_imports_and_has_typed_parameters():
    for stage, (_, algos) in registry.STAGES.items():
        for name in algos:
            func = registry.get_function(stage, name)
            assert callable(func)
            assert func.__doc__, f"{stage}/{name} has no docstring"
            for p in registry.parameters(stage, name).values():
                assert p.kind in (bool, int, float, str, tuple)


@pytest.mark.parametrize("name", ["default", "fast", "medi", "tfi", "tv", "two_pass"])
def test_builtin_recipes_load(name):
    assert name in builtin_recipes()
    recipe = load_recipe(name)
    assert set(recipe.stages) == set(registry.STAGES)
    prov = recipe.provenance()
    assert prov["Pipeline"] == name
    assert prov["inversion"]["Algorithm"] == recipe["inversion"].algorithm


@pytest.mark.parametrize("name", ["default", "fast", "medi", "tfi", "tv", "two_pass"])
def test_builtin_recipes_list_every_parameter(name):
    """So that a user who copies one sees every knob (scripts/update_recipes.py)."""
    import tomllib

    data = tomllib.loads((Path(__file__).parents[1] / "workflows" / f"{name}.toml").read_text())
    for stage in registry.STAGES:
        listed = set(data[stage]) - {"algorithm"}
        known = set(registry.parameters(stage, data[stage]["algorithm"]))
        assert listed == known, f"{name}.toml [{stage}]: missing {known - listed}"


def test_default_pipeline_uses_an_iterative_inversion():
    """Since 2026-12: nonlinear TV with the weak-harmonic term and its TV weight from the
    data (lambda_ = 0: lambda_per_sigma times the field's cone inconsistency)."""
    inversion = load_recipe("default")["inversion"]
    assert inversion.algorithm == "nltv"
    assert inversion.params["weak_harmonic"] is True
    assert inversion.params["lambda_"] == 0.0  # automatic weight
    assert inversion.params["lambda_per_sigma"] > 0
    assert inversion.params["max_iter"] > 1
    # the former default stays available as its own recipe
    assert load_recipe("medi")["inversion"].algorithm == "medi"


def _minimal(**override):
    data = {stage: {"algorithm": registry.algorithms(stage)[0]} for stage in registry.STAGES}
    data.update(override)
    return data


def test_parameters_are_resolved_and_converted():
    recipe = parse_recipe(_minimal(inversion={"algorithm": "tkd", "threshold": 1}))
    assert recipe["inversion"].params["threshold"] == 1.0
    assert isinstance(recipe["inversion"].params["threshold"], float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"inversion": {"algorithm": "magic"}}, "algorithm 'magic' is unknown"),
        ({"inversion": {"algorithm": "tkd", "treshold": 0.2}}, "unknown parameter(s) treshold"),
        ({"inversion": {"algorithm": "tkd", "threshold": "high"}}, "expected float"),
        ({"unwarp": {"algorithm": "x"}}, "unknown stage(s) unwarp"),
    ],
)
def test_bad_recipes_give_clear_errors(override, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(_minimal(**override))
    assert message in str(err.value)


def test_missing_stage_and_bad_files(tmp_path: Path):
    data = _minimal()
    del data["background"]
    with pytest.raises(RecipeError, match=r"missing table \[background\]"):
        parse_recipe(data)
    bad = tmp_path / "bad.toml"
    bad.write_text("[inversion\nalgorithm = 'tkd'")
    with pytest.raises(RecipeError, match="not valid TOML") as err:
        load_recipe(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(RecipeError, match="unknown pipeline 'nope'"):
        load_recipe("nope")


def test_user_recipe_file_round_trip(tmp_path: Path):
    text = (Path(__file__).resolve().parents[1] / "workflows" / "fast.toml").read_text()
    head, rest = text.split("[inversion]\n")
    tail = rest[rest.index("\n\n") :]
    path = tmp_path / "mine.toml"
    path.write_text(head + '[inversion]\nalgorithm = "tikhonov"\nlambda_ = 0.05' + tail)
    recipe = load_recipe(path)
    assert recipe["inversion"].algorithm == "tikhonov"
    assert recipe["inversion"].params["lambda_"] == pytest.approx(0.05)
    # switching the algorithm but keeping the old one's parameters is an error
    path.write_text(text.replace('algorithm = "tkd"', 'algorithm = "tikhonov"'))
    with pytest.raises(RecipeError, match="unknown parameter"):
        load_recipe(path)
