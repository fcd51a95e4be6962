"""``qsm-bids invert``: susceptibility from a given field map.

The truth is analytic, not made by the code under test: spheres of known susceptibility
inside an ellipsoidal "brain", whose field at each voxel centre is the exact one of a
sphere, ``(dchi / 3) (a / r)^3 (3 cos^2 theta - 1)`` outside it and 0 inside (Lorentz
corrected), summed over the spheres; for ``--total`` a strong source outside the mask (an
air-like sphere, +9.4 ppm) and a harmonic offset and gradient are added. Accuracy is the
contrast of each sphere's core against the surrounding tissue, which does not depend on
the referencing; a sign, unit, factor-of-B0 or B0-direction error changes it grossly.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsm_bids.cli.main import main
from qsm_bids.recipe import load_recipe

N = 48
#: proton gyromagnetic ratio / 2 pi (MHz/T), CODATA 2018, written out here on purpose
GAMMA_BAR = 42.57747892
#: (centre mm, radius mm, susceptibility ppm) of the spheres inside the brain
SPHERES = (
    ((-8.0, -5.0, 2.0), 5.0, 0.20),
    ((7.0, 6.0, -3.0), 4.5, -0.15),
    ((2.0, -7.0, -6.0), 4.0, 0.12),
    ((-3.0, 8.0, 6.0), 4.0, 0.08),
)

#: a small recipe for the faster checks (every stage with its algorithm's defaults)
TV_RECIPE = """\
[pipeline]
name = "test_tv"
[mask]
algorithm = "magnitude"
[unwrap]
algorithm = "laplacian"
[combine]
algorithm = "weighted_fit"
[background]
algorithm = "lbv"
[inversion]
# a fixed weight: these tests are about the data weights and the background stage; the
# automatic weight (lambda_ = 0) is tested on the default recipe and in
# test_core_regularisation.py
algorithm = "tv_admm"
lambda_ = 5e-5
data_weights = true
[reference]
algorithm = "mean"
[r2star]
algorithm = "loglinear"
"""


class Phantom:
    """Spheres in an ellipsoid on an N^3 grid with a given affine; fields in ppm.

    ``b0_world`` is B0 in world coordinates; the fields are evaluated at the voxel
    centres' world positions (mm), so the test does not use the code's B0 conversion.
    """

    def __init__(self, affine: np.ndarray, b0_world=(0.0, 0.0, 1.0)) -> None:
        self.affine = np.asarray(affine, float)
        idx = np.indices((N, N, N)).reshape(3, -1).astype(float)
        world = self.affine[:3, :3] @ idx + self.affine[:3, 3:4]
        centre = self.affine[:3, :3] @ np.full((3, 1), (N - 1) / 2) + self.affine[:3, 3:4]
        self.x = (world - centre).reshape(3, N, N, N)  # mm from the grid centre
        self.b = np.asarray(b0_world, float) / np.linalg.norm(b0_world)
        self.mask = (self.x[0] / 20) ** 2 + (self.x[1] / 18) ** 2 + (self.x[2] / 16) ** 2 <= 1
        self.local = sum(self.sphere_field(c, a, x) for c, a, x in SPHERES)
        self.cores = [self.distance(c) <= a - 1.5 for c, a, _ in SPHERES]
        self.tissue = self.mask.copy()
        for c, a, _ in SPHERES:
            self.tissue &= self.distance(c) > a + 2
        # outside the brain: an air-like sphere near a corner, plus a harmonic offset and
        # gradient (B0 inhomogeneity), about five times the local field in the brain
        air = self.sphere_field((24.0, 24.0, 22.0), 8.0, 9.4)
        self.background = air + 0.3 + 0.01 * self.x[0] - 0.005 * self.x[2]

    def distance(self, centre) -> np.ndarray:
        return np.sqrt(((self.x - np.asarray(centre)[:, None, None, None]) ** 2).sum(0))

    def sphere_field(self, centre, radius: float, dchi: float) -> np.ndarray:
        r = np.maximum(self.distance(centre), 1e-9)
        d = self.x - np.asarray(centre)[:, None, None, None]
        cos = np.tensordot(self.b, d, axes=1) / r
        field = dchi / 3 * (radius / r) ** 3 * (3 * cos**2 - 1)
        return np.where(r <= radius, 0.0, field)

    def contrast_error(self, chi: np.ndarray) -> float:
        """RMS error of the spheres' contrast against the tissue, relative to the truth's."""
        tissue = float(chi[self.tissue].mean())
        est = np.array([chi[core].mean() - tissue for core in self.cores])
        true = np.array([x for *_, x in SPHERES])
        return float(np.sqrt(np.mean((est - true) ** 2) / np.mean(true**2)))

    def write(self, path: Path, data: np.ndarray) -> Path:
        nb.Nifti1Image(np.asarray(data, np.float32), self.affine).to_filename(str(path))
        return path


#: world = voxel index (1 mm), B0 along the third array axis
AXIAL = np.diag([1.0, 1.0, 1.0, 1.0])
#: array axis 0 along world z (B0), axis 1 along world x, axis 2 along world y;
#: anisotropic voxels (1.0 x 1.2 x 1.1 mm)
PERMUTED = np.array(
    [[0.0, 1.2, 0.0, -20.0], [0.0, 0.0, 1.1, 5.0], [1.0, 0.0, 0.0, 12.0], [0, 0, 0, 1]]
)


@pytest.fixture(scope="module")
def axial(tmp_path_factory) -> tuple[Phantom, Path]:
    ph = Phantom(AXIAL)
    d = tmp_path_factory.mktemp("axial")
    ph.write(d / "local_ppm.nii.gz", np.where(ph.mask, ph.local, 0))
    ph.write(d / "local_hz.nii.gz", np.where(ph.mask, ph.local * GAMMA_BAR * 3.0, 0))
    total = ph.local + ph.background
    ph.write(d / "total_hz.nii.gz", np.where(ph.mask, total * GAMMA_BAR * 3.0, 0))
    ph.write(d / "mask.nii.gz", ph.mask.astype(np.float32))
    # magnitude: darker spheres (iron-like), for MEDI's edge mask
    ph.write(d / "magnitude.nii.gz", 1.0 - 0.3 * np.any(ph.cores, axis=0) * ph.mask)
    return ph, d


@pytest.fixture(scope="module")
def default_ppm(axial, tmp_path_factory) -> Path:
    """The default recipe on the local field in ppm, run once for several checks."""
    _, d = axial
    out = tmp_path_factory.mktemp("out") / "chi.nii.gz"
    code = main(
        [
            "invert",
            str(d / "local_ppm.nii.gz"),
            str(d / "mask.nii.gz"),
            str(out),
            "--unit",
            "ppm",
            "--field-strength",
            "3",
            "--magnitude",
            str(d / "magnitude.nii.gz"),
            "-q",
        ]
    )
    assert code == 0
    return out


def _chi(path: Path) -> np.ndarray:
    return np.asarray(nb.load(str(path)).dataobj, dtype=np.float64)


def test_default_recipe_recovers_the_analytic_spheres_from_hz_and_ppm(axial, default_ppm, tmp_path):
    ph, d = axial
    chi_ppm = _chi(default_ppm)
    err = ph.contrast_error(chi_ppm)
    assert err < 0.2, err
    hz = tmp_path / "chi_hz.nii"
    code = main(
        [
            "invert",
            str(d / "local_hz.nii.gz"),
            str(d / "mask.nii.gz"),
            str(hz),
            "--unit",
            "Hz",
            "--field-strength",
            "3",
            "--magnitude",
            str(d / "magnitude.nii.gz"),
            "-q",
        ]
    )
    assert code == 0
    chi_hz = _chi(hz)
    assert np.max(np.abs(chi_hz - chi_ppm)) < 1e-4  # ppm: the same map
    # B0 along world x instead of z: the spheres' dipole patterns are misread
    wrong = tmp_path / "chi_wrong.nii.gz"
    code = main(
        [
            "invert",
            str(d / "local_hz.nii.gz"),
            str(d / "mask.nii.gz"),
            str(wrong),
            "--unit",
            "Hz",
            "--field-strength",
            "3",
            "--magnitude",
            str(d / "magnitude.nii.gz"),
            "--b0-direction",
            "1",
            "0",
            "0",
            "-q",
        ]
    )
    assert code == 0
    wrong_err = ph.contrast_error(_chi(wrong))
    assert wrong_err > 0.6 and wrong_err > 4 * err, (wrong_err, err)
    # the bound catches a factor-of-B0 (3 T) or a sign error
    assert ph.contrast_error(chi_ppm * 3) > 1.0
    assert ph.contrast_error(chi_ppm / 3) > 0.5
    assert ph.contrast_error(-chi_ppm) > 1.5


def test_output_is_on_the_input_grid_float32_zero_outside_the_mask(axial, default_ppm):
    ph, d = axial
    img = nb.load(str(default_ppm))
    src = nb.load(str(d / "local_ppm.nii.gz"))
    assert img.shape == src.shape
    assert np.allclose(img.affine, src.affine)
    assert img.get_data_dtype() == np.float32
    chi = np.asarray(img.dataobj)
    assert np.all(chi[~ph.mask] == 0)
    assert np.all(np.isfinite(chi))
    assert not list(default_ppm.parent.glob(".*tmp*"))  # no temporary file left


def test_sidecar_records_units_stages_field_strength_and_sources(axial, default_ppm):
    _, d = axial
    side = json.loads(default_ppm.with_name("chi.json").read_text())
    recipe = load_recipe("default")
    assert side["Units"] == "ppm"
    assert side["Pipeline"] == recipe.name
    assert side["Stages"]["inversion"]["Algorithm"] == recipe["inversion"].algorithm
    assert side["Stages"]["inversion"] == json.loads(json.dumps(recipe["inversion"].provenance()))
    assert side["Stages"]["reference"]["Algorithm"] == recipe["reference"].algorithm
    assert "background" not in side["Stages"]  # a local field: no background removal
    assert side["MagneticFieldStrength"] == 3.0
    assert side["FieldStrengthSource"] == "--field-strength"
    assert side["InputFieldUnit"] == "ppm"
    assert np.allclose(side["B0Direction"], [0, 0, 1])
    assert side["SoftwareVersion"].startswith("qsm_bids ")
    names = " ".join(side["Sources"])
    for name in ("local_ppm.nii.gz", "mask.nii.gz", "magnitude.nii.gz"):
        assert name in names
    assert side["InputFiles"]["field"] == str((d / "local_ppm.nii.gz").resolve())


def test_b0_direction_comes_from_the_affine_in_world_coordinates(tmp_path):
    """Array axis 0 runs along world z (B0), voxels anisotropic: the default direction
    (world z, converted with the affine) is right, world y is wrong."""
    ph = Phantom(PERMUTED)
    field = ph.write(tmp_path / "field.nii.gz", np.where(ph.mask, ph.local, 0))
    mask = ph.write(tmp_path / "mask.nii.gz", ph.mask)
    recipe = tmp_path / "tv.toml"
    recipe.write_text(TV_RECIPE)
    runs = {
        "default": [],
        "world_z": ["--b0-direction", "0", "0", "2"],
        "world_y": ["--b0-direction", "0", "1", "0"],
    }
    chi = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.nii.gz"
        args = ["invert", str(field), str(mask), str(out), "--unit", "ppm"]
        assert main([*args, "--pipeline", str(recipe), "-q", *extra]) == 0
        chi[name] = _chi(out)
    err = ph.contrast_error(chi["default"])
    assert err < 0.2, err
    assert np.array_equal(chi["default"], chi["world_z"])
    wrong = ph.contrast_error(chi["world_y"])
    assert wrong > 0.6 and wrong > 4 * err, (wrong, err)
    side = json.loads((tmp_path / "default.json").read_text())
    assert np.allclose(side["B0Direction"], [1, 0, 0], atol=1e-6)
    assert np.allclose(side["VoxelSize"], [1.0, 1.2, 1.1])
    assert side["FieldStrengthSource"] == "not given"
    assert "MagneticFieldStrength" not in side
    assert side["Stages"]["inversion"]["Algorithm"] == "tv_admm"


def test_total_field_with_a_strong_outside_source(axial, tmp_path):
    """--total: the default recipe's background removal with its feedback passes, and a
    recipe with LBV and TV-ADMM, which without --total shows what the background does."""
    ph, d = axial
    out = tmp_path / "chi.nii.gz"
    common = [
        str(d / "total_hz.nii.gz"),
        str(d / "mask.nii.gz"),
        str(out),
        "--unit",
        "Hz",
        "--field-strength",
        "3",
        "--magnitude",
        str(d / "magnitude.nii.gz"),
        "-q",
    ]
    assert main(["invert", *common, "--total"]) == 0
    err = ph.contrast_error(_chi(out))
    assert err < 0.3, err
    side = json.loads(out.with_name("chi.json").read_text())
    recipe = load_recipe("default")
    assert side["Stages"]["background"]["Algorithm"] == recipe["background"].algorithm
    assert side["FeedbackPasses"] == recipe["background"].params["dipole_feedback"]
    assert side["InputFieldType"] == "total"
    # LBV + TV-ADMM (no harmonic term of its own, unlike nltv's weak-harmonic option)
    recipe_path = tmp_path / "tv.toml"
    recipe_path.write_text(TV_RECIPE)
    assert main(["invert", *common, "--total", "--pipeline", str(recipe_path)]) == 0
    tv_err = ph.contrast_error(_chi(out))
    assert tv_err < 0.3, tv_err
    # the same total field taken for a local field: the outside source ruins the map
    assert main(["invert", *common, "--pipeline", str(recipe_path)]) == 0
    no_bg = ph.contrast_error(_chi(out))
    assert no_bg > 1.0 and no_bg > 3 * tv_err, (no_bg, tv_err)


def test_noise_map_weights_in_the_field_unit_and_the_array_function(axial, tmp_path):
    """--noise in Hz and in ppm give the same weights; with data_weights the noise changes
    the map; invert_field on arrays gives what the command writes."""
    from qsm_bids.invert import invert_field

    ph, d = axial
    recipe = tmp_path / "tv.toml"
    recipe.write_text(TV_RECIPE)
    noise_ppm = np.where(ph.x[0] > 0, 0.01, 0.001)  # noisier half
    ph.write(tmp_path / "noise_ppm.nii.gz", noise_ppm)
    ph.write(tmp_path / "noise_hz.nii.gz", noise_ppm * GAMMA_BAR * 3.0)
    outs = {}
    for unit in ("ppm", "Hz"):
        outs[unit] = tmp_path / f"chi_{unit}.nii.gz"
        field = d / f"local_{unit.lower()}.nii.gz"
        args = [
            "invert",
            str(field),
            str(d / "mask.nii.gz"),
            str(outs[unit]),
            "--unit",
            unit,
            "--field-strength",
            "3",
            "--noise",
            str(tmp_path / f"noise_{unit.lower()}.nii.gz"),
            "--pipeline",
            str(recipe),
            "-q",
        ]
        assert main(args) == 0
    with_noise = _chi(outs["ppm"])
    assert np.max(np.abs(_chi(outs["Hz"]) - with_noise)) < 1e-4
    assert ph.contrast_error(with_noise) < 0.25
    local = np.asarray(nb.load(str(d / "local_ppm.nii.gz")).dataobj)
    chi, prov = invert_field(
        local,
        ph.mask,
        (1.0, 1.0, 1.0),
        (0.0, 0.0, 1.0),
        load_recipe(recipe),
        noise_ppm=noise_ppm.astype(np.float32),
        field_strength=3.0,
    )
    assert np.max(np.abs(chi - with_noise)) < 1e-6
    assert prov["Stages"]["inversion"]["Parameters"]["data_weights"] is True
    unweighted, _ = invert_field(
        local, ph.mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), load_recipe(recipe)
    )
    assert np.max(np.abs(unweighted - chi)) > 1e-3  # the weights were used


FEEDBACK_RECIPE = """\
[pipeline]
name = "test_feedback"
[mask]
algorithm = "magnitude"
[unwrap]
algorithm = "laplacian"
[combine]
algorithm = "weighted_fit"
[background]
algorithm = "pdf"
max_iter = 20
peel = 1
data_weights = true
dipole_feedback = 2
feedback_relaxation = 2.0
feedback_max_iter = 5
[inversion]
algorithm = "medi"
max_iter = 3
preliminary_max_iter = 2
data_weights = true
[reference]
algorithm = "mean"
[r2star]
algorithm = "loglinear"
"""


def test_stages_match_the_participant_levels_interfaces(axial, tmp_path, monkeypatch):
    """invert_field on a total field gives the map of the participant level's nipype
    interfaces chained as init_qsm_wf chains them (plain pass, preliminary inversion, two
    relaxed feedback passes in the linear form, inversion after each, referencing), with
    data weights from the noise map (Hz there, ppm here) and the magnitude.

    B0 is chosen so that 1 ppm is exactly 64 Hz: the unit conversions are then exact in
    float32 and the two must agree to the bit (PDF's float32 conjugate gradients amplify
    a last-bit difference of their input to about 1 % of the local field)."""
    from qsm_bids import registry
    from qsm_bids.core.physics import ppm_to_hz
    from qsm_bids.interfaces.stages import BackgroundRemoval, DipoleInversion, Reference
    from qsm_bids.invert import invert_field

    b0_t = 1.5031420747163395
    assert ppm_to_hz(1.0, b0_t) == 64.0
    ph, d = axial
    recipe_path = tmp_path / "feedback.toml"
    recipe_path.write_text(FEEDBACK_RECIPE)
    recipe = load_recipe(recipe_path)
    total_ppm = np.where(ph.mask, ph.local + ph.background, 0).astype(np.float32)
    noise_ppm = np.where(ph.x[1] > 0, 0.004, 0.001).astype(np.float32)
    field = str(ph.write(tmp_path / "total_hz.nii", total_ppm * 64))
    noise = str(ph.write(tmp_path / "noise_hz.nii", noise_ppm * 64))
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {"voxel_size": [1.0, 1.0, 1.0], "b0_dir": [0.0, 0.0, 1.0], "field_strength": b0_t}
        )
    )
    mask, magnitude = str(d / "mask.nii.gz"), str(d / "magnitude.nii.gz")
    bg, inv, ref = recipe["background"], recipe["inversion"], recipe["reference"]

    def run(interface, choice, **inputs):
        """One node in a folder of its own, as nipype runs it (the files keep their names)."""
        cwd = tmp_path / f"node{len(list(tmp_path.glob('node*')))}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        node = interface(
            algorithm=choice.algorithm, params=dict(choice.params), meta=str(meta), **inputs
        )
        return node.run().outputs

    first = run(BackgroundRemoval, bg, field=field, mask=mask, noise=noise)
    chi = run(
        DipoleInversion,
        inv.with_max_iter_from(registry.PRELIMINARY_MAX_ITER),
        local_field=first.local_field,
        mask=first.local_mask,
        magnitude=magnitude,
        noise=noise,
    ).chi
    previous = first
    for _ in range(2):
        bg_i = run(
            BackgroundRemoval,
            bg.with_max_iter_from(registry.FEEDBACK_MAX_ITER),
            field=field,
            mask=mask,
            noise=noise,
            first_local=first.local_field,
            chi=chi,
            chi_mask=previous.local_mask,
            previous_local=previous.local_field,
        )
        chi = run(
            DipoleInversion,
            inv,
            local_field=bg_i.local_field,
            mask=bg_i.local_mask,
            magnitude=magnitude,
            noise=noise,
        ).chi
        previous = bg_i
    expected = _chi(run(Reference, ref, chi=chi, mask=previous.local_mask).chi)

    mag = np.asarray(nb.load(magnitude).dataobj)
    got, prov = invert_field(
        total_ppm,
        ph.mask,
        (1.0, 1.0, 1.0),
        (0.0, 0.0, 1.0),
        recipe,
        magnitude=mag,
        noise_ppm=noise_ppm,
        total=True,
        field_strength=b0_t,
    )
    assert prov["FeedbackPasses"] == 2 and prov["BackgroundFieldUnit"] == "Hz"
    local_mask = np.asarray(nb.load(previous.local_mask).dataobj) > 0
    assert 0 < local_mask.sum() < ph.mask.sum()  # peel = 1
    assert prov["MaskVoxels"] == local_mask.sum()
    assert np.array_equal(got, expected)
    # the command on the same files in Hz
    out = tmp_path / "chi.nii"
    code = main(
        [
            "invert",
            field,
            mask,
            str(out),
            "--unit",
            "Hz",
            "--field-strength",
            repr(b0_t),
            "--total",
            "--noise",
            noise,
            "--magnitude",
            magnitude,
            "--pipeline",
            str(recipe_path),
            "-q",
        ]
    )
    assert code == 0
    assert np.array_equal(_chi(out), expected)


# ------------------------------------------------------------------------------ bad input
def _bad_inputs(d: Path) -> Path:
    """Small valid inputs in ``d`` (12^3), plus the broken variants the cases use."""
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    mask = np.zeros(shape, np.float32)
    mask[3:9, 3:9, 3:9] = 1
    field = (rng.standard_normal(shape) * 0.01).astype(np.float32)
    aff = np.eye(4)
    save = lambda data, name, a=aff: nb.Nifti1Image(np.asarray(data, np.float32), a).to_filename(  # noqa: E731
        str(d / name)
    )
    save(field, "field.nii.gz")
    save(mask, "mask.nii.gz")
    save(np.ones(shape), "mag.nii.gz")
    save(mask[:, :, :10], "mask_small.nii.gz")
    shifted = aff.copy()
    shifted[0, 3] = 2.0
    save(np.ones(shape), "mag_shifted.nii.gz", shifted)
    save(np.ones((12, 12, 11)), "noise_small.nii.gz")
    save(np.zeros(shape), "mask_empty.nii.gz")
    nan = field.copy()
    nan[5, 5, 5] = np.nan
    save(nan, "field_nan.nii.gz")
    save(np.stack([field, field], axis=-1), "field_4d.nii.gz")
    (d / "broken.nii.gz").write_bytes(b"this is not a NIfTI image")
    return d


BAD_CASES = {
    "mask grid": (["field.nii.gz", "mask_small.nii.gz", "--unit", "ppm"], "mask_small.nii.gz"),
    "magnitude affine": (
        ["field.nii.gz", "mask.nii.gz", "--unit", "ppm", "--magnitude", "mag_shifted.nii.gz"],
        "mag_shifted.nii.gz",
    ),
    "noise grid": (
        ["field.nii.gz", "mask.nii.gz", "--unit", "ppm", "--noise", "noise_small.nii.gz"],
        "noise_small.nii.gz",
    ),
    "empty mask": (["field.nii.gz", "mask_empty.nii.gz", "--unit", "ppm"], "mask_empty.nii.gz"),
    "NaN in the mask": (["field_nan.nii.gz", "mask.nii.gz", "--unit", "ppm"], "field_nan.nii.gz"),
    "no unit": (["field.nii.gz", "mask.nii.gz"], "field.nii.gz"),
    "Hz without field strength": (["field.nii.gz", "mask.nii.gz", "--unit", "Hz"], "field.nii.gz"),
    "implausible field strength": (
        ["field.nii.gz", "mask.nii.gz", "--unit", "Hz", "--field-strength", "127.7"],
        "field.nii.gz",
    ),
    "4D field": (["field_4d.nii.gz", "mask.nii.gz", "--unit", "ppm"], "field_4d.nii.gz"),
    "unreadable mask": (["field.nii.gz", "broken.nii.gz", "--unit", "ppm"], "broken.nii.gz"),
    "missing magnitude": (
        ["field.nii.gz", "mask.nii.gz", "--unit", "ppm", "--magnitude", "absent.nii.gz"],
        "absent.nii.gz",
    ),
    "unknown pipeline": (
        ["field.nii.gz", "mask.nii.gz", "--unit", "ppm", "--pipeline", "nonesuch"],
        "nonesuch",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_a_one_line_error_naming_the_file_and_writes_nothing(case, tmp_path, capsys):
    d = _bad_inputs(tmp_path)
    args, culprit = BAD_CASES[case]
    field, mask, *options = args
    out = tmp_path / "out" / "chi.nii.gz"
    before = set(tmp_path.rglob("*"))
    code = main(
        [
            "invert",
            str(d / field),
            str(d / mask),
            str(out),
            *[str(d / o) if o.endswith(".nii.gz") else o for o in options],
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("qsm-bids invert: error:") and culprit in err, err
    assert set(tmp_path.rglob("*")) == before  # no output, sidecar or temporary file


def test_output_name_must_be_nifti_and_not_an_input(tmp_path, capsys):
    d = _bad_inputs(tmp_path)
    for out in (tmp_path / "chi.mgz", d / "field.nii.gz"):
        code = main(
            ["invert", str(d / "field.nii.gz"), str(d / "mask.nii.gz"), str(out), "--unit", "ppm"]
        )
        err = capsys.readouterr().err
        assert code == 2 and str(out) in err, err
    assert not (tmp_path / "chi.mgz").exists()


def test_help_lists_every_option_with_units(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["invert", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--unit ppm|Hz",
        "--field-strength T",
        "--total",
        "--magnitude",
        "--noise",
        "--pipeline",
        "--b0-direction X Y Z",
        "--reference-mask",
        "-v",
        "-q",
        "FIELD",
        "MASK",
        "OUTPUT",
    ):
        assert option in text, option
    for unit in ("ppm", "Hz", "tesla", "world coordinates", "voxel space"):
        assert unit in text, unit
