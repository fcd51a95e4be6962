"""SWI and minIP (qsm_bids.core.swi): known answers and the simulated phantom's veins."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.swi import (
    combine_magnitude,
    minimum_intensity_projection,
    phase_mask,
    slab_voxels,
    swi,
)


def test_combine_magnitude_te_weighted():
    te = np.array([0.01, 0.02, 0.03])
    mag = np.ones((2, 2, 2, 3)) * np.array([3.0, 2.0, 1.0])
    out = combine_magnitude(mag, te)
    want = np.sqrt((3 * 0.01) ** 2 + (2 * 0.02) ** 2 + (1 * 0.03) ** 2) / np.sqrt(0.0014)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # a T2*-free signal is returned unchanged
    np.testing.assert_allclose(combine_magnitude(np.full((1, 1, 1, 3), 5.0), te), 5.0)


def test_phase_mask_values():
    te = 0.02
    f = np.array([-10.0, 0.0, 6.25, 12.5, 25.0, 100.0])  # phi = 2 pi f TE: .., pi/4, pi/2, pi
    w = phase_mask(f, te, power=4)
    np.testing.assert_allclose(w, [1, 1, 0.75**4, 0.5**4, 0, 0], atol=1e-6)
    inside = np.array([True, True, True, True, True, False])
    assert phase_mask(f, te, mask=inside)[-1] == 1.0


def _cylinder_vein(n=32, radius=3.0, chi=0.4):
    """A vein along z (B0) in uniform tissue; local field from the dipole kernel (Hz)."""
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2,) * 3, indexing="ij")
    vein = x**2 + y**2 <= radius**2
    kx, ky, kz = np.meshgrid(*(np.fft.fftfreq(n),) * 3, indexing="ij")
    k2 = kx**2 + ky**2 + kz**2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(k2 > 0, 1 / 3 - kz**2 / k2, 0.0)
    field_ppm = np.real(np.fft.ifftn(d * np.fft.fftn(vein * chi)))
    return vein, field_ppm * 127.7  # ppm -> Hz at 3 T


def test_cylinder_vein_darker_in_swi_and_minip():
    vein, field = _cylinder_vein()
    assert field[vein].mean() > 0  # paramagnetic vein: positive local field
    te = np.array([0.005, 0.01, 0.015, 0.02])
    mag = np.full(vein.shape + (4,), 100.0)
    out = swi(mag, te, field)
    shell = ndimage.binary_dilation(vein, iterations=3) & ~vein
    assert out[vein].mean() < 0.5 * out[shell].mean()
    mip = minimum_intensity_projection(out, slab_voxels(8.0, 2.0), axis=2)
    assert mip[vein].mean() < 0.5 * mip[shell].mean()


def test_minip_equals_slab_minimum():
    rng = np.random.default_rng(0)
    v = rng.random((4, 5, 11)).astype(np.float32)
    out = minimum_intensity_projection(v, 4, axis=2)
    for k in range(11):
        lo, hi = max(0, k - 2), min(11, k + 2)
        np.testing.assert_array_equal(out[..., k], v[..., lo:hi].min(axis=-1))
    out0 = minimum_intensity_projection(v, 3, axis=0)
    np.testing.assert_array_equal(out0[1], v[0:3].min(axis=0))
    assert slab_voxels(8.0, 3.0) == 3 and slab_voxels(1.0, 3.0) == 1


def test_bad_input():
    with pytest.raises(ValueError):
        combine_magnitude(np.ones((2, 2, 2, 3)), np.array([0.01, 0.02]))
    with pytest.raises(ValueError):
        minimum_intensity_projection(np.ones((2, 2, 2)), 0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The 3 mm realistic phantom: magnitudes, echo times, truth local field, masks."""
    from qsm_bids.simulate.dataset import TRUTH_NAME, simulate_dataset
    from qsm_bids.simulate.phantom import VEIN

    root = tmp_path_factory.mktemp("swi_phantom")
    simulate_dataset(root, subjects=1, resolution_mm=3, phantom="realistic")
    anat = root / "sub-01" / "anat"
    truth = root / "derivatives" / TRUTH_NAME / "sub-01" / "anat"
    mags, tes = [], []
    for f in sorted(anat.glob("*_part-mag_MEGRE.nii.gz")):
        mags.append(np.asarray(nib.load(f).dataobj, dtype=np.float32))
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        tes.append(json.loads(side.read_text())["EchoTime"])

    def load(name):
        return np.asarray(nib.load(truth / f"sub-01_{name}.nii.gz").dataobj)

    brain = load("desc-brain_mask") > 0
    vein = (load("dseg") == VEIN) & brain
    shell = ndimage.binary_dilation(vein, iterations=2) & ~vein & brain
    shell &= np.abs(load("Chimap")) < 0.2  # tissue, not another vein or a nucleus
    return {
        "root": root,
        "mag": np.stack(mags, axis=-1),
        "tes": np.array(tes),
        "field": load("desc-local_fieldmap"),
        "field_path": truth / "sub-01_desc-local_fieldmap.nii.gz",
        "brain_path": truth / "sub-01_desc-brain_mask.nii.gz",
        "brain": brain,
        "vein": vein,
        "shell": shell,
    }


def test_simulated_veins_darker(phantom):
    vein, shell, brain = phantom["vein"], phantom["shell"], phantom["brain"]
    assert vein.sum() > 20
    assert phantom["field"][vein].mean() > 0  # the project's sign: vein, positive field
    out = swi(phantom["mag"], phantom["tes"], phantom["field"], mask=brain)
    comb = combine_magnitude(phantom["mag"], phantom["tes"])
    # the phase mask darkens the veins beyond their magnitude contrast
    assert out[vein].mean() / out[shell].mean() < comb[vein].mean() / comb[shell].mean()
    assert out[vein].mean() < 0.8 * out[shell].mean()
    mip = minimum_intensity_projection(out, slab_voxels(8.0, 3.0))
    assert mip[vein].mean() < 0.8 * mip[shell].mean()


def test_swi_interface_writes_derivatives(phantom, tmp_path):
    """The interface's files: BIDS names, sidecars, and veins darker than tissue."""
    from qsm_bids.bids.layout import find_runs
    from qsm_bids.interfaces.load import run_to_json
    from qsm_bids.interfaces.swi import SWI

    (run,) = find_runs(phantom["root"])
    ref = nib.load(run.magnitude_files[0])
    mag4 = tmp_path / "mag.nii.gz"
    nib.save(nib.Nifti1Image(phantom["mag"], ref.affine), mag4)
    negated = tmp_path / "negated_field.nii.gz"  # as the pipeline gives it with sign -1
    nib.save(nib.Nifti1Image(-phantom["field"].astype(np.float32), ref.affine), negated)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"echo_times": phantom["tes"].tolist(), "b0_dir": [0, 0, 1],
                                "voxel_size": [3.0, 3.0, 3.0]}))  # fmt: skip
    out_dir = tmp_path / "out"
    res = SWI(
        magnitude=str(mag4), local_field=str(negated), sign=-1, mask=str(phantom["brain_path"]),
        meta=str(meta), run_json=run_to_json(run), output_dir=str(out_dir),
        bids_dir=str(phantom["root"]), run_hash="abc",
    ).run(cwd=str(tmp_path))  # fmt: skip
    vein, shell = phantom["vein"], phantom["shell"]
    for key in ("swi", "minip"):
        path = Path(getattr(res.outputs, key))
        assert path.name == f"sub-01_desc-{key}_T2starw.nii.gz"
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert side["RunHash"] == "abc" and side["SWIParameters"]["PhaseMaskPower"] == 4.0
        assert any("part-mag" in s for s in side["Sources"])
        data = np.asarray(nib.load(path).dataobj)
        assert data[vein].mean() < 0.8 * data[shell].mean()
    minip_side = json.loads(
        Path(res.outputs.minip).with_suffix("").with_suffix(".json").read_text()
    )
    assert minip_side["SWIParameters"]["SlabVoxels"] == 3
