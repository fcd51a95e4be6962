"""The two-pass option through the participant level: a brain mask with a hole (as a
phase-quality mask has at a strong source) gives a map that fills the hole from the
second pass, close to the truth, and is as good as one pass elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.cli.main import main
from qsm_bids.simulate.dataset import simulate_dataset

ANAT = Path("sub-01") / "anat"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_pass")
    # the ideal phantom: the test compares the two-pass option with one pass on the same
    # data and mask, in and around a hole; it does not bound the default's accuracy
    bids = simulate_dataset(root / "bids", subjects=1, resolution_mm=3.0, seed=4, phantom="ideal")
    truth = bids / "derivatives" / "qsm_bids-truth" / ANAT
    img = nb.load(truth / "sub-01_desc-brain_mask.nii.gz")
    brain = np.asarray(img.dataobj) > 0
    # a hole of radius 3 voxels at the centre of the brain, as at a strong source
    centre = np.round(ndimage.center_of_mass(brain)).astype(int)
    grid = np.indices(brain.shape)
    hole = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 9
    holed = brain & ~hole
    mask_file = root / "holed_mask.nii.gz"
    nb.Nifti1Image(holed.astype(np.uint8), img.affine).to_filename(mask_file)
    default = (Path(__file__).parents[1] / "workflows" / "default.toml").read_text()
    assert "two_pass = false" in default
    recipe = root / "two_pass.toml"
    recipe.write_text(default.replace("two_pass = false", "two_pass = true"))
    outs = {}
    for name, pipeline in (("one", "default"), ("two", str(recipe))):
        out = root / name
        args = [str(bids), str(out), "participant", "-w", str(root / f"w-{name}")]
        args += ["--no-registration", "--mask-file", str(mask_file), "--pipeline", pipeline]
        assert main(args) == 0
        outs[name] = out
    return outs, holed, hole, truth


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def test_two_pass_fills_the_hole_and_keeps_the_rest(runs) -> None:
    outs, holed, hole, truth_dir = runs
    one = _load(outs["one"] / ANAT / "sub-01_Chimap.nii.gz")
    two = _load(outs["two"] / ANAT / "sub-01_Chimap.nii.gz")
    m_one = _load(outs["one"] / ANAT / "sub-01_desc-local_mask.nii.gz") > 0
    m_two = _load(outs["two"] / ANAT / "sub-01_desc-local_mask.nii.gz") > 0
    truth = _load(truth_dir / "sub-01_Chimap.nii.gz")
    assert not (m_one & hole).any()  # one pass: the hole stays empty
    filled = m_two & hole
    assert filled.sum() > 0.9 * hole.sum()  # two passes: filled
    assert np.all(m_two[m_one])

    def referenced(x):  # every map referenced over the same voxels
        return x - x[m_one].mean()

    t, a, b = referenced(truth), referenced(one), referenced(two)
    # in the hole: the second pass's values follow the truth
    err_hole = float(np.sqrt(np.mean((b[filled] - t[filled]) ** 2)))
    corr = float(np.corrcoef(b[filled], t[filled])[0, 1])
    print(f"hole: RMSE {err_hole:.4f} ppm, correlation {corr:.2f}")
    # measured 0.0078 ppm, 0.77 with the nltv default (2026-12-04; MEDI 0.0063, 0.92)
    assert err_hole < 0.02 and corr > 0.7
    # elsewhere: as good as one pass
    rmse_one = float(np.sqrt(np.mean((a[m_one] - t[m_one]) ** 2)))
    rmse_two = float(np.sqrt(np.mean((b[m_one] - t[m_one]) ** 2)))
    print(f"elsewhere: RMSE {rmse_one:.4f} ppm (one pass), {rmse_two:.4f} ppm (two)")
    assert rmse_two < 1.05 * rmse_one  # measured 0.0594 both (nltv; MEDI 0.0619)
    side = json.loads((outs["two"] / ANAT / "sub-01_Chimap.json").read_text())
    assert side["Stages"]["inversion"]["Parameters"]["two_pass"] is True
