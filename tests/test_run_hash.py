"""The run's provenance hash (``run_hash`` of the writer interfaces) lands as ``RunHash`` in
every JSON file a run's writers produce, and nowhere when it is not given."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids.bids.layout import find_runs
from qsm_bids.interfaces.derivatives import WriteDerivatives
from qsm_bids.interfaces.load import LoadRun, run_to_json
from qsm_bids.interfaces.registration import WriteSegmentationDerivatives, names_to_json
from qsm_bids.recipe import load_recipe
from tests.test_bids_layout import SHAPE, write_run


def _run_and_maps(tmp_path: Path):
    """A small raw run, its loader metadata and five maps on its grid."""
    ds = tmp_path / "ds"
    write_run(ds)
    (run,) = find_runs(ds)
    (tmp_path / "load").mkdir()
    load = LoadRun(run_json=run_to_json(run), in_files=[str(p) for p in run.files])
    meta = load.run(cwd=str(tmp_path / "load")).outputs.meta
    affine = nb.load(run.phase_files[0]).affine
    ball = (np.indices(SHAPE) - np.reshape(np.array(SHAPE) // 2, (3, 1, 1, 1))) ** 2
    mask = ball.sum(0) <= 16
    chi = np.where(mask, np.linspace(-0.1, 0.1, mask.size).reshape(SHAPE), 0)
    files = {}
    for name, data in (("chi", chi), ("mask", mask), ("local_mask", mask),
                       ("total_field", 10 * chi), ("local_field", 5 * chi)):  # fmt: skip
        files[name] = str(tmp_path / f"{name}.nii")
        nb.Nifti1Image(np.asarray(data, np.float32), affine).to_filename(files[name])
    return ds, run, meta, files


def _sidecars(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]


def test_derivative_sidecars_carry_the_run_hash(tmp_path: Path) -> None:
    ds, run, meta, files = _run_and_maps(tmp_path)
    provenance = json.dumps(load_recipe("fast").provenance())
    for out, run_hash in ((tmp_path / "with", "0123abcd"), (tmp_path / "without", None)):
        cwd = tmp_path / f"cwd-{out.name}"
        cwd.mkdir()
        node = WriteDerivatives(
            run_json=run_to_json(run),
            output_dir=str(out),
            bids_dir=str(ds),
            provenance=provenance,
            meta=meta,
            **files,
        )
        if run_hash is not None:
            node.inputs.run_hash = run_hash
        written = node.run(cwd=str(cwd)).outputs.out_files
        sides = _sidecars(out)
        assert len(written) == len(sides) == 5  # one sidecar per map
        if run_hash is None:
            assert all("RunHash" not in side for side in sides)
        else:
            assert [side["RunHash"] for side in sides] == [run_hash] * 5


def test_segmentation_sidecars_carry_the_run_hash(tmp_path: Path) -> None:
    ds, run, _, files = _run_and_maps(tmp_path)
    labels = (nb.load(files["mask"]).get_fdata() > 0).astype(np.int16)
    dseg = tmp_path / "dseg.nii"
    nb.Nifti1Image(labels, nb.load(files["mask"]).affine).to_filename(dseg)
    table = tmp_path / "regionstats.tsv"
    table.write_text("region\tlabel\nwhole_brain\t0\nball\t1\n")
    out = tmp_path / "out"
    node = WriteSegmentationDerivatives(
        run_json=run_to_json(run), output_dir=str(out), bids_dir=str(ds), seg_name="ball",
        seg_file=str(dseg), names_json=names_to_json({1: "ball"}), dseg_subject=str(dseg),
        regionstats_tsv=str(table), run_hash="feedbeef",
    )  # fmt: skip
    (tmp_path / "cwd").mkdir()
    node.run(cwd=str(tmp_path / "cwd"))
    # the labels' sidecar and the table's column descriptions
    suffixes = sorted(p.name.rsplit("_", 1)[1] for p in out.rglob("*.json"))
    assert suffixes == ["dseg.json", "regionstats.json"]
    assert [side["RunHash"] for side in _sidecars(out)] == ["feedbeef", "feedbeef"]
