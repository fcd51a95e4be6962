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
                 "r2star_wf.r2star", "outputs_wf.phase_sign",
                 "outputs_wf.derivatives"):  # fmt: skip
        assert node in names
    wf = init_participant_wf([run], _config(tmp_path, bids))
    assert wf.base_dir == str((tmp_path / "w").resolve())


def _dataflow(wf) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """The graph nipype executes (sub-workflows flattened, identity nodes removed):
    (source, destination) node names, relative to ``wf`` -> the connected (output, input)
    ports. Independent of how the builders nest their sub-workflows."""
    from copy import deepcopy

    from nipype.pipeline.engine.utils import _remove_nonjoin_identity_nodes

    flat = _remove_nonjoin_identity_nodes(deepcopy(wf._create_flat_graph()))
    prefix = wf.name + "."
    return {
        (u.fullname.removeprefix(prefix), v.fullname.removeprefix(prefix)): set(d["connect"])
        for u, v, d in flat.edges(data=True)
    }


@pytest.mark.parametrize("passes", [0, 2])
def test_feedback_passes_chain_background_and_inversion(tmp_path: Path, recipe, passes):
    """``dipole_feedback = N`` adds N background + inversion pairs, each fed the previous
    unreferenced map; the derivatives and the sign check take the last pair's outputs, and
    the local field written is one more plain (not relaxed) pass on the final map."""
    from dataclasses import replace

    from qsm_bids import registry

    bids = _tiny_bids(tmp_path / "bids")
    run = find_runs(bids)[0]
    bg = recipe["background"]
    choice = replace(bg, params={**bg.params, registry.FEEDBACK: passes})
    recipe = replace(recipe, stages={**recipe.stages, "background": choice})
    wf = init_qsm_wf(run, _config(tmp_path, bids), recipe=recipe)
    names = set(wf.list_node_names())
    feedback = "feedback_wf.background_feedback{}_wf.background".format
    inversion = "feedback_wf.inversion_feedback{}_wf.{}".format
    consistent = "feedback_wf.background_consistent_wf.background"
    for i in range(1, passes + 1):
        assert feedback(i) in names and inversion(i, "invert") in names
    assert feedback(passes + 1) not in names
    assert (consistent in names) == bool(passes)
    flow = _dataflow(wf)
    last_bg = feedback(passes) if passes else "background_wf.background"
    last_ref = inversion(passes, "reference") if passes else "inversion_wf.reference"
    written_bg = consistent if passes else last_bg
    sign, write = "outputs_wf.phase_sign", "outputs_wf.derivatives"
    assert ("chi", "chi") in flow[last_ref, sign]
    assert ("local_mask", "mask") in flow[last_bg, sign]
    assert ("local_mask", "local_mask") in flow[last_bg, write]
    assert ("local_field", "local_field") in flow[written_bg, write]
    assert ("note", "reference_note") in flow[last_ref, write]
    assert ("chi", "chi") in flow[sign, write]
    if not passes:
        return
    first = "background_wf.background"
    last_inv = inversion(passes, "invert")
    # the consistent pass: on the final map and its pass's mask, in the linear form, and
    # not relaxed (nothing feeds its previous_local)
    assert ("chi", "chi") in flow[last_inv, consistent]
    assert ("local_mask", "chi_mask") in flow[last_bg, consistent]
    assert ("local_field", "first_local") in flow[first, consistent]
    into = {dst for (_, v), ports in flow.items() if v == consistent for _, dst in ports}
    assert "previous_local" not in into and {"field", "mask", "meta"} <= into
    # pass 1 starts from the first map (its mask, over-relaxed from its local field) ...
    assert ("chi", "chi") in flow["inversion_wf.invert", feedback(1)]
    assert {("local_mask", "chi_mask"), ("local_field", "previous_local"),
            ("local_field", "first_local")} <= flow[first, feedback(1)]  # fmt: skip
    # ... and pass i from pass i - 1's map, mask and local field
    for i in range(2, passes + 1):
        assert ("chi", "chi") in flow[inversion(i - 1, "invert"), feedback(i)]
        previous = flow[feedback(i - 1), feedback(i)]
        assert {("local_mask", "chi_mask"), ("local_field", "previous_local")} <= previous
        # every pass removes the background of the map's field alone (the linear form)
        assert ("local_field", "first_local") in flow[first, feedback(i)]
    # every inversion inverts its own pass's local field
    for i in range(1, passes + 1):
        assert ("local_field", "local_field") in flow[feedback(i), inversion(i, "invert")]


def test_two_pass_takes_the_final_feedback_pass_and_its_outputs_are_written(tmp_path, recipe):
    """``two_pass = true``: the field is unwrapped and fitted (and R2* mapped) on the mask
    with its holes filled; the second pass combines with the final feedback pass (its map,
    its mask, the consistent local field) and its outputs are the ones checked and
    written; the first pass's background still runs on the brain mask itself."""
    from dataclasses import replace

    from qsm_bids import registry

    bids = _tiny_bids(tmp_path / "bids")
    run = find_runs(bids)[0]
    inv = recipe["inversion"]
    inv = replace(inv, params={**inv.params, registry.TWO_PASS: True})
    recipe = replace(recipe, stages={**recipe.stages, "inversion": inv})
    passes = recipe["background"].params[registry.FEEDBACK]
    assert passes >= 1
    flow = _dataflow(init_qsm_wf(run, _config(tmp_path, bids), recipe=recipe))
    fill, brain = "field_mask_wf.fill_mask_holes", "mask_wf.brain_mask"
    assert ("mask", "mask") in flow[brain, fill]
    for step in ("unwrap_wf.unwrap", "combine_wf.combine", "r2star_wf.r2star",
                 "two_pass_wf.background_wf.background"):  # fmt: skip
        assert ("mask", "mask") in flow[fill, step]
        assert (brain, step) not in flow
    assert ("mask", "mask") in flow[brain, "background_wf.background"]
    assert ("phase", "phase") in flow["load", "unwrap_wf.unwrap"]
    combine = "two_pass_wf.combine"
    final = f"feedback_wf.inversion_feedback{passes}_wf.invert"
    assert ("chi", "chi_reliable") in flow[final, combine]
    assert ("local_field", "local_reliable") in flow[
        "feedback_wf.background_consistent_wf.background", combine]  # fmt: skip
    assert ("local_mask", "reliable_mask") in flow[
        f"feedback_wf.background_feedback{passes}_wf.background", combine]  # fmt: skip
    write, sign = "outputs_wf.derivatives", "outputs_wf.phase_sign"
    assert {("local_field", "local_field"), ("mask", "local_mask")} <= flow[combine, write]
    assert ("mask", "mask") in flow[combine, sign]
    assert ("chi", "chi") in flow["two_pass_wf.reference", sign]
    assert ("note", "reference_note") in flow["two_pass_wf.reference", write]
    assert ("r2star", "r2star") in flow["r2star_wf.r2star", "two_pass_wf.reference"]


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
        "background_wf.background", "feedback_wf.background_feedback1_wf.background",
        "feedback_wf.background_consistent_wf.background",
        "inversion_wf.invert", "feedback_wf.inversion_feedback1_wf.invert")}  # fmt: skip
    assert params == {
        "background_wf.background": 40,
        "feedback_wf.background_feedback1_wf.background": 7,
        "feedback_wf.background_consistent_wf.background": 7,
        "inversion_wf.invert": 2,
        "feedback_wf.inversion_feedback1_wf.invert": 9,
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
