"""Workflow builders: each returns a nipype Workflow with inputnode/outputnode, wired so
that every stage of the recipe runs once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsm_bids.bids.layout import find_runs
from qsm_bids.config import Config, ExecutionSettings, NipypeSettings, WorkflowSettings
from qsm_bids.pipeline.base import init_participant_wf, init_qsm_wf, phase_only_recipe
from qsm_bids.pipeline.field import init_echo_combination_wf, init_mask_wf, init_unwrap_wf
from qsm_bids.pipeline.susceptibility import (
    init_background_wf,
    init_inversion_wf,
    init_r2star_wf,
)
from qsm_bids.recipe import load_recipe
from tests.test_cli import _tiny_bids


@pytest.fixture
def recipe():
    return load_recipe("default")


def _config(root: Path, bids: Path, nprocs: int = 0, omp_nthreads: int = 0, **workflow) -> Config:
    """A config for building workflows on ``bids`` (outputs and work folder under ``root``)."""
    return Config(
        execution=ExecutionSettings(bids_dir=bids, output_dir=root / "out", work_dir=root / "w"),
        workflow=WorkflowSettings(**workflow),
        nipype=NipypeSettings(nprocs=nprocs, omp_nthreads=omp_nthreads),
    )


def test_stage_builders_have_input_and_output_nodes(recipe):
    wfs = [
        init_mask_wf(recipe["mask"]),
        init_unwrap_wf(recipe["unwrap"]),
        init_echo_combination_wf(recipe["combine"]),
        init_background_wf(recipe["background"]),
        init_inversion_wf(recipe["inversion"], recipe["reference"]),
        init_r2star_wf(recipe["r2star"]),
    ]
    for wf in wfs:
        names = wf.list_node_names()
        assert "inputnode" in names and "outputnode" in names
        assert wf.name.endswith("_wf")


def test_stage_node_carries_the_recipe_choice(recipe):
    wf = init_inversion_wf(recipe["inversion"], recipe["reference"])
    node = wf.get_node("invert")
    assert node.inputs.algorithm == recipe["inversion"].algorithm == "nltv"
    assert node.inputs.params == recipe["inversion"].params


def test_run_workflow_has_every_stage(tmp_path: Path, recipe):
    bids = _tiny_bids(tmp_path / "bids")
    run = find_runs(bids)[0]
    wf = init_qsm_wf(run, _config(tmp_path, bids), recipe=recipe)
    names = set(wf.list_node_names())
    for node in ("load", "mask_wf.brain_mask", "unwrap_wf.unwrap", "combine_wf.combine",
                 "background_wf.background", "inversion_wf.invert", "inversion_wf.reference",
                 "r2star_wf.r2star", "derivatives"):  # fmt: skip
        assert node in names
    wf = init_participant_wf([run], _config(tmp_path, bids))
    assert wf.base_dir == str((tmp_path / "w").resolve())


@pytest.mark.parametrize("passes", [0, 2])
def test_feedback_passes_chain_background_and_inversion(tmp_path: Path, recipe, passes):
    """``dipole_feedback = N`` adds N background + inversion pairs, each fed the previous
    unreferenced map; the derivatives and the sign check take the last pair's outputs."""
    from dataclasses import replace

    from qsm_bids import registry

    bids = _tiny_bids(tmp_path / "bids")
    run = find_runs(bids)[0]
    bg = recipe["background"]
    choice = replace(bg, params={**bg.params, registry.FEEDBACK: passes})
    recipe = replace(recipe, stages={**recipe.stages, "background": choice})
    wf = init_qsm_wf(run, _config(tmp_path, bids), recipe=recipe)
    names = set(wf.list_node_names())
    for i in range(1, passes + 1):
        assert f"background_feedback{i}_wf.background" in names
        assert f"inversion_feedback{i}_wf.invert" in names
    assert f"background_feedback{passes + 1}_wf.background" not in names
    graph = wf._graph
    last_bg = wf.get_node(f"background_feedback{passes}_wf" if passes else "background_wf")
    last_inv = wf.get_node(f"inversion_feedback{passes}_wf" if passes else "inversion_wf")
    assert graph.has_edge(last_inv, wf.get_node("phase_sign"))
    # the local field written: with feedback, one more plain linear pass on the final map
    written = wf.get_node("background_consistent_wf") if passes else last_bg
    assert ("background_consistent_wf.background" in names) == bool(passes)
    edge = graph.get_edge_data(written, wf.get_node("derivatives"))
    assert ("outputnode.local_field", "local_field") in edge["connect"]
    if passes:
        edge = graph.get_edge_data(last_inv, written)
        assert ("outputnode.chi_raw", "inputnode.chi") in edge["connect"]
        edge = graph.get_edge_data(wf.get_node("background_wf"), written)
        assert ("outputnode.local_field", "inputnode.first_local") in edge["connect"]
        # and it is not relaxed: nothing feeds its previous_local
        into = [c for u in graph.predecessors(written) for c in graph[u][written]["connect"]]
        assert all(dst != "inputnode.previous_local" for _, dst in into)
        edge = graph.get_edge_data(wf.get_node("inversion_feedback1_wf"), last_bg)
        assert ("outputnode.chi_raw", "inputnode.chi") in edge["connect"]
        # each pass is over-relaxed from the local field of the pass before it
        edge = graph.get_edge_data(wf.get_node("background_feedback1_wf"), last_bg)
        assert ("outputnode.local_field", "inputnode.previous_local") in edge["connect"]
        assert ("outputnode.local_mask", "inputnode.chi_mask") in edge["connect"]
        # every pass removes the background of the map's field alone (the linear form)
        first = wf.get_node("background_wf")
        for i in range(1, passes + 1):
            edge = graph.get_edge_data(first, wf.get_node(f"background_feedback{i}_wf"))
            assert ("outputnode.local_field", "inputnode.first_local") in edge["connect"]


def test_feedback_passes_and_the_first_map_take_their_own_iteration_counts(tmp_path, recipe):
    """``feedback_max_iter`` sets the feedback passes' background ``max_iter`` and
    ``preliminary_max_iter`` the first inversion's; the last inversion keeps its own."""
    from dataclasses import replace

    from qsm_bids import registry

    bids = _tiny_bids(tmp_path / "bids")
    run = find_runs(bids)[0]
    bg, inv = recipe["background"], recipe["inversion"]
    stages = {
        **recipe.stages,
        "background": replace(bg, params={**bg.params, registry.FEEDBACK: 1,
                                          registry.FEEDBACK_MAX_ITER: 7, "max_iter": 40}),
        "inversion": replace(inv, params={**inv.params, registry.PRELIMINARY_MAX_ITER: 2,
                                          "max_iter": 9}),
    }  # fmt: skip
    config = _config(tmp_path, bids)
    wf = init_qsm_wf(run, config, recipe=replace(recipe, stages=stages))
    params = {n: wf.get_node(n).inputs.params["max_iter"] for n in (
        "background_wf.background", "background_feedback1_wf.background",
        "inversion_wf.invert", "inversion_feedback1_wf.invert")}  # fmt: skip
    assert params == {
        "background_wf.background": 40,
        "background_feedback1_wf.background": 7,
        "inversion_wf.invert": 2,
        "inversion_feedback1_wf.invert": 9,
    }
    # without feedback passes the one inversion is the result: its own max_iter
    stages["background"] = replace(stages["background"], params={
        **stages["background"].params, registry.FEEDBACK: 0})  # fmt: skip
    wf = init_qsm_wf(run, config, recipe=replace(recipe, stages=stages))
    assert wf.get_node("inversion_wf.invert").inputs.params["max_iter"] == 9


def test_phase_only_runs_switch_to_the_phase_quality_mask(recipe):
    po = phase_only_recipe(recipe)
    assert po["mask"].algorithm == "phase_quality"
    assert po.provenance()["mask"]["Algorithm"] == "phase_quality"
    assert po["inversion"] == recipe["inversion"]


def test_cores_are_shared_between_runs(tmp_path: Path, recipe):
    bids = _tiny_bids(tmp_path / "bids")
    sub2 = bids / "sub-02" / "anat"
    sub2.mkdir(parents=True)
    for f in (bids / "sub-01" / "anat").iterdir():
        (sub2 / f.name.replace("sub-01", "sub-02")).write_bytes(f.read_bytes())
    runs = find_runs(bids)
    assert [r.subject for r in runs] == ["01", "02"]

    def heavy_threads(n_runs: int, cores: int, omp_nthreads: int = 0) -> int:
        config = _config(tmp_path, bids, nprocs=cores, omp_nthreads=omp_nthreads)
        wf = init_participant_wf(runs[:n_runs], config)
        return wf.get_node("qsm_sub_01.inversion_wf.invert").n_procs

    assert heavy_threads(1, 4) == 4  # one run: all cores for its FFTs
    assert heavy_threads(2, 4) == 2  # two runs side by side
    assert heavy_threads(2, 1) == 1
    assert heavy_threads(2, 4, omp_nthreads=3) == 3  # --omp-nthreads: as given
