"""Real-world inputs: every accepted layout and encoding loads consistently, and every bad
input is refused with a one-line error naming the file and the problem, the run skipped
(exit code 2) while the other participants are processed.

One shared dataset (module fixture) holds a good participant, participants in each
accepted variant layout, and one participant per bad-input case; ``qsm-bids`` runs on it
once and the per-case tests read its log and outputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from qsm_bids.bids.layout import find_runs
from qsm_bids.bids.load import load_run, validate_run
from qsm_bids.cli.main import main
from qsm_bids.errors import QSMInputError
from qsm_bids.interfaces.load import run_from_json, run_to_json

SHAPE = (24, 20, 16)
VOX = (2.0, 2.0, 2.0)
TES = (0.004, 0.009, 0.014)
INT_TOL = np.pi / 4096 + 1e-5  # quantisation of dcm2niix integers (rad)


# --------------------------------------------------------------------------------------
# writing small datasets
# --------------------------------------------------------------------------------------


def _wrap(x):
    return np.mod(x + np.pi, 2 * np.pi) - np.pi


def centred_affine(shape=SHAPE, vox=VOX) -> np.ndarray:
    aff = np.diag([*vox, 1.0])
    aff[:3, 3] = -np.asarray(vox) * (np.asarray(shape) - 1) / 2
    return aff


def make_signal(shape=SHAPE, tes=TES, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude, wrapped phase in rad), each (X, Y, Z, E): an ellipsoid 'head' with a
    smooth field (Hz) inside and noise outside."""
    rng = np.random.default_rng(seed)
    c = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (c[0] ** 2 + c[1] ** 2 + c[2] ** 2) / 0.75**2 <= 1
    f_hz = 20 * c[0] - 15 * c[1] + 30 * c[2] ** 2 + 10 * c[0] * c[1]
    te = np.asarray(tes, dtype=np.float64)
    mag = np.where(head, 800.0, 0.0)[..., None] * np.exp(-te / 0.05)
    mag = np.abs(mag + rng.normal(0, 5, (*shape, len(te))))
    phase = _wrap(0.3 + 2 * np.pi * f_hz[..., None] * te)
    phase = np.where(head[..., None], phase, rng.uniform(-np.pi, np.pi, phase.shape))
    phase.flat[0], phase.flat[1] = -np.pi, np.pi * 4095 / 4096  # the full range
    return mag.astype(np.float32), phase


def _save(path: Path, data: np.ndarray, affine: np.ndarray, *, slope_inter=None, dtype=None):
    img = nib.Nifti1Image(data, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)  # nibabel chooses scl_slope/scl_inter
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, path)


def encode_phase(phase: np.ndarray, encoding: str) -> tuple[np.ndarray, dict, str]:
    """(stored array, _save keywords, sidecar Units) of a phase (rad) in one encoding."""
    if encoding == "radians":
        return phase.astype(np.float32), {}, "rad"
    if encoding == "int":  # dcm2niix: -4096..4095
        return np.clip(np.rint(phase * 4096 / np.pi), -4096, 4095).astype(np.int16), {}, ""
    if encoding == "uint":  # older dcm2niix: 0..4095
        return (
            (np.rint(np.mod(phase, 2 * np.pi) * 4096 / (2 * np.pi)) % 4096).astype(np.uint16),
            {},
            "arbitrary",
        )
    if encoding == "slope":  # radians stored as int16 with a float scl_slope
        return phase.astype(np.float32), {"dtype": np.int16}, "rad"
    if encoding == "slope_int":  # stored 0..4095, scl_slope 2, scl_inter -4096
        raw = np.rint((phase + np.pi) * 4096 / (2 * np.pi)) % 4096
        return raw.astype(np.int16), {"slope_inter": (2.0, -4096.0)}, ""
    raise ValueError(encoding)


def write_subject(
    root: Path,
    sub: str,
    *,
    ses: str | None = None,
    acq: str | None = None,
    run: str | None = None,
    suffix: str = "MEGRE",
    ext: str = ".nii.gz",
    layout: str = "echo",
    parts: str = "mag-phase",
    encoding: str = "int",
    tes: tuple = TES,
    shape: tuple = SHAPE,
    affine: np.ndarray | None = None,
    meta: dict | None = None,
    signal: tuple[np.ndarray, np.ndarray] | None = None,
    sidecars: bool = True,
    seed: int = 0,
) -> dict:
    """Write one run. ``layout``: "echo" (3D file per echo) or "4d" (one file per part,
    ``EchoTime`` a list); ``parts``: "mag-phase", "phase" (phase only) or "real-imag".

    Returns {"files": {part: [paths]}, "mag", "phase" (truth, rad), "tes", "anat"}.
    """
    root.mkdir(parents=True, exist_ok=True)
    desc = root / "dataset_description.json"
    if not desc.exists():
        desc.write_text(json.dumps({"Name": "inputs", "BIDSVersion": "1.10.0"}))
    affine = centred_affine(shape) if affine is None else affine
    meta = {"MagneticFieldStrength": 3.0} if meta is None else meta
    anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    ents = [f"sub-{sub}"] + [f"{k}-{v}" for k, v in (("ses", ses), ("acq", acq), ("run", run)) if v]
    prefix = "_".join(ents)
    n = len(tes)
    mag, phase = signal if signal is not None else make_signal(shape, tes, seed)
    stored: dict[str, tuple[np.ndarray, dict, str]] = {}
    if parts == "real-imag":
        stored["real"] = ((mag * np.cos(phase)).astype(np.float32), {}, "")
        stored["imag"] = ((mag * np.sin(phase)).astype(np.float32), {}, "")
    else:
        stored["phase"] = encode_phase(phase, encoding)
        if parts == "mag-phase":
            stored["mag"] = (mag, {}, "")
    files: dict[str, list[Path]] = {}
    for part, (data, kw, units) in stored.items():
        side_meta = {**meta, **({"Units": units} if units else {})}
        if layout == "4d":
            name = f"{prefix}_part-{part}_{suffix}"
            _save(anat / f"{name}{ext}", data if n > 1 else data[..., 0], affine, **kw)
            files[part] = [anat / f"{name}{ext}"]
            if sidecars:
                te_value = list(tes) if n > 1 else tes[0]
                (anat / f"{name}.json").write_text(json.dumps({"EchoTime": te_value, **side_meta}))
            continue
        files[part] = []
        for e in range(n):
            name = f"{prefix}_echo-{e + 1}_part-{part}_{suffix}"
            _save(anat / f"{name}{ext}", data[..., e], affine, **kw)
            files[part].append(anat / f"{name}{ext}")
            if sidecars:
                (anat / f"{name}.json").write_text(json.dumps({"EchoTime": tes[e], **side_meta}))
    return {"files": files, "mag": mag, "phase": phase, "tes": tes, "anat": anat}


def circ_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.angle(np.exp(1j * (a.astype(np.float64) - b))))))


def load_one(ds: Path, sub: str | None = None):
    (run,) = find_runs(ds, [sub] if sub else None)
    validate_run(run)
    return run, load_run(run)


# --------------------------------------------------------------------------------------
# accepted inputs (find_runs + load_run)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "tol", "note"),
    [
        ("radians", 1e-6, "already in radians"),
        ("int", INT_TOL, "integer phase -4096..4095 (8192 levels)"),
        ("uint", INT_TOL, "integer phase 0..4095 (4096 levels)"),
        ("slope", 2e-4, "NIfTI scaling applied"),
        ("slope_int", INT_TOL, "value = stored * 2 + -4096"),
    ],
)
def test_phase_encodings_are_detected_and_rescaled(tmp_path, encoding, tol, note):
    info = write_subject(tmp_path / "ds", "01", encoding=encoding)
    run, d = load_one(tmp_path / "ds")
    assert d.phase.dtype == np.float32 and d.phase.min() >= -np.pi and d.phase.max() < np.pi
    assert circ_err(d.phase, info["phase"]) <= tol
    assert any(note in n for n in d.notes), d.notes
    if encoding == "slope_int":  # the scaled values are dcm2niix-like integers
        assert any("integer phase -4096..4094" in n for n in d.notes), d.notes
    if encoding.startswith("slope"):
        assert sum("NIfTI scaling" in n for n in d.notes) == 1  # one note for all echoes
        assert any("NIfTI scaling" in n for n in validate_run(run))


@pytest.mark.parametrize("parts", ["mag-phase", "real-imag", "phase"])
def test_4d_layout_loads_like_per_echo_layout(tmp_path, parts):
    ds = tmp_path / "ds"
    signal = make_signal(seed=3)
    write_subject(ds, "echo", parts=parts, signal=signal, encoding="radians")
    write_subject(ds, "stack", parts=parts, signal=signal, encoding="radians", layout="4d")
    r_echo, d_echo = load_one(ds, "echo")
    r_stack, d_stack = load_one(ds, "stack")
    assert r_stack.phase_volumes == (0, 1, 2) and len(set(r_stack.phase_files)) == 1
    assert len(r_stack.phase_files) == 3 and r_echo.phase_volumes == ()
    assert r_stack.echo_times == r_echo.echo_times == pytest.approx(TES)
    np.testing.assert_array_equal(d_stack.phase, d_echo.phase)
    if parts == "phase":
        assert d_stack.magnitude is None and d_echo.magnitude is None
    else:
        np.testing.assert_array_equal(d_stack.magnitude, d_echo.magnitude)
    np.testing.assert_array_equal(d_stack.affine, d_echo.affine)
    assert d_stack.header.get_data_shape() == d_echo.header.get_data_shape() == SHAPE
    assert d_stack.voxel_size == d_echo.voxel_size
    np.testing.assert_array_equal(d_stack.b0_dir, d_echo.b0_dir)
    assert d_stack.field_strength == d_echo.field_strength == 3.0


def test_4d_phase_with_per_echo_magnitude(tmp_path):
    ds = tmp_path / "ds"
    signal = make_signal(seed=4)
    write_subject(ds, "01", signal=signal, encoding="radians", layout="4d", parts="phase")
    write_subject(ds, "02", signal=signal, encoding="radians")
    for f in (ds / "sub-02" / "anat").glob("*part-mag*"):
        f.rename(ds / "sub-01" / "anat" / f.name.replace("sub-02", "sub-01"))
    run, d = load_one(ds, "01")
    assert run.phase_volumes == (0, 1, 2) and run.magnitude_volumes == ()
    np.testing.assert_allclose(d.magnitude, signal[0])
    assert circ_err(d.phase, signal[1]) < 1e-6


def test_4d_magnitude_sidecar_without_echo_time_is_completed_with_a_warning(tmp_path):
    """A 4D magnitude whose sidecar lacks EchoTime takes the phase's list; the warning names
    both files and reaches the loader's notes (which go into the log and the sidecars)."""
    ds = tmp_path / "ds"
    info = write_subject(ds, "01", layout="4d", encoding="radians")
    mag, phase = info["files"]["mag"][0], info["files"]["phase"][0]
    _edit_sidecar(mag, EchoTime=None)
    run, d = load_one(ds, "01")
    assert run.echo_times == pytest.approx(TES)
    text = (
        f"EchoTime missing from the sidecar of {mag.name}: taken from its phase twin {phase.name}"
    )
    assert text in run.warnings
    assert text in d.notes


def test_real_and_imaginary_parts_become_magnitude_and_phase(tmp_path):
    info = write_subject(tmp_path / "ds", "01", parts="real-imag")
    run, d = load_one(tmp_path / "ds")
    assert run.parts == "real-imag" and run.has_magnitude
    assert circ_err(d.phase, info["phase"]) < 1e-5  # float32 arctan2
    np.testing.assert_allclose(d.magnitude, info["mag"], rtol=1e-5, atol=1e-3)
    assert d.phase.min() >= -np.pi and d.phase.max() < np.pi and d.magnitude.min() >= 0
    assert any("computed from the real and imaginary images" in n for n in d.notes)


def test_suffixes_extensions_sessions_runs_and_acquisitions(tmp_path):
    ds = tmp_path / "ds"
    write_subject(ds, "01", ses="pre", run="1", suffix="T2starw", ext=".nii")
    write_subject(ds, "01", ses="pre", run="2", suffix="T2starw", ext=".nii", layout="4d")
    write_subject(ds, "01", ses="post", acq="hires")
    write_subject(ds, "02", ext=".nii", layout="4d", tes=(0.005, 0.01, 0.015, 0.02))
    runs = find_runs(ds)
    assert [(r.name, r.suffix) for r in runs] == [
        ("sub-01_ses-post_acq-hires", "MEGRE"),
        ("sub-01_ses-pre_run-1", "T2starw"),
        ("sub-01_ses-pre_run-2", "T2starw"),
        ("sub-02", "MEGRE"),
    ]
    for r in runs:
        validate_run(r)
        d = load_run(r)
        assert d.phase.shape == (*SHAPE, len(r.echo_times)) == d.magnitude.shape
    assert runs[3].echo_times == pytest.approx((0.005, 0.01, 0.015, 0.02))


def test_inherited_sidecars_for_the_4d_layout(tmp_path):
    ds = tmp_path / "ds"
    write_subject(ds, "01", layout="4d", ses="A", sidecars=False)
    write_subject(ds, "02", layout="4d", sidecars=False)
    # dataset level: echo times and field strength; session level: another field strength
    (ds / "MEGRE.json").write_text(json.dumps({"EchoTime": list(TES), "MagneticFieldStrength": 3}))
    (ds / "sub-01" / "ses-A" / "sub-01_ses-A_MEGRE.json").write_text(
        json.dumps({"MagneticFieldStrength": 7})
    )
    r1, r2 = find_runs(ds)
    assert r1.echo_times == r2.echo_times == pytest.approx(TES)
    assert (r1.field_strength, r2.field_strength) == (7.0, 3.0)
    assert load_run(r1).phase.shape == (*SHAPE, 3)


@pytest.mark.parametrize(
    "axcodes", [("L", "A", "S"), ("R", "P", "I"), ("P", "S", "R"), ("I", "L", "P")]
)
def test_orientations_anisotropic_voxels_and_odd_matrix(tmp_path, axcodes):
    shape, vox = (23, 19, 15), (0.9, 1.3, 2.1)
    aff = centred_affine(shape, vox)
    mag, phase = make_signal(shape)
    ornt = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    o_aff = aff @ inv_ornt_aff(ornt, shape)
    o_sig = (apply_orientation(mag, ornt), apply_orientation(phase, ornt))
    ds = tmp_path / "ds"
    write_subject(ds, "ras", shape=shape, affine=aff, signal=(mag, phase), encoding="radians")
    o_shape = o_sig[0].shape[:3]
    write_subject(ds, "other", shape=o_shape, affine=o_aff, signal=o_sig, encoding="radians")
    _, ref = load_one(ds, "ras")
    _, d = load_one(ds, "other")
    assert nib.aff2axcodes(d.affine) == axcodes
    back = ornt_transform(axcodes2ornt(axcodes), axcodes2ornt(("R", "A", "S")))
    np.testing.assert_array_equal(apply_orientation(d.phase, back), ref.phase)
    np.testing.assert_array_equal(apply_orientation(d.magnitude, back), ref.magnitude)
    # voxel sizes and the B0 direction follow the voxel axes
    axis = [int(a) for a in ornt[:, 0]]  # RAS axis i becomes voxel axis axis[i]
    for i in range(3):
        assert d.voxel_size[axis[i]] == pytest.approx(ref.voxel_size[i])
        assert abs(d.b0_dir[axis[i]]) == pytest.approx(abs(ref.b0_dir[i]))
    assert abs(ref.b0_dir[2]) == pytest.approx(1.0)


@pytest.mark.parametrize("layout", ["echo", "4d"])
def test_single_echo(tmp_path, layout):
    info = write_subject(tmp_path / "ds", "01", tes=(0.02,), layout=layout)
    run, d = load_one(tmp_path / "ds")
    assert run.echo_times == (0.02,) and run.phase_volumes == ()
    assert d.phase.shape == (*SHAPE, 1) and d.magnitude.shape == (*SHAPE, 1)
    assert circ_err(d.phase, info["phase"]) <= INT_TOL


def test_phase_only_4d(tmp_path):
    info = write_subject(tmp_path / "ds", "01", layout="4d", parts="phase")
    run, d = load_one(tmp_path / "ds")
    assert not run.has_magnitude and d.magnitude is None
    assert circ_err(d.phase, info["phase"]) <= INT_TOL
    assert any(n.startswith("no magnitude") for n in d.notes)


def test_magnitude_without_part_entity(tmp_path):
    info = write_subject(tmp_path / "ds", "01")
    for f in info["files"]["mag"]:
        f.rename(f.with_name(f.name.replace("_part-mag", "")))
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        side.rename(side.with_name(side.name.replace("_part-mag", "")))
    run, d = load_one(tmp_path / "ds")
    assert len(run.magnitude_files) == 3 and "part-" not in run.magnitude_files[0].name
    assert any("without a part- entity" in w for w in run.warnings)
    np.testing.assert_allclose(d.magnitude, info["mag"])


def test_nan_outside_the_head_is_zeroed_with_a_note(tmp_path):
    info = write_subject(tmp_path / "ds", "01", encoding="radians")
    outside = info["mag"][..., 0] < 50
    for f in info["files"]["phase"] + info["files"]["mag"]:
        img = nib.load(f)
        data = img.get_fdata(dtype=np.float32)
        data[outside] = np.nan
        nib.save(nib.Nifti1Image(data, img.affine), f)
    run, d = load_one(tmp_path / "ds")
    n = int(outside.sum())
    assert np.all(d.phase[outside] == 0) and np.all(d.magnitude[outside] == 0)
    assert circ_err(d.phase[~outside], info["phase"][~outside]) < 1e-6
    assert sum(f"{n} non-finite (NaN/Inf) values" in note for note in d.notes) == 6


def test_run_survives_the_json_round_trip(tmp_path):
    write_subject(tmp_path / "ds", "01", layout="4d", parts="real-imag")
    (run,) = find_runs(tmp_path / "ds")
    again = run_from_json(run_to_json(run))
    assert again == run and hash(again) == hash(run)
    assert again.parts == "real-imag" and again.phase_volumes == (0, 1, 2)


# --------------------------------------------------------------------------------------
# bad inputs: one participant per case in one shared dataset, one qsm-bids invocation
# --------------------------------------------------------------------------------------


def _rewrite(path: Path, fn) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj)), img.affine), path)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.split(".")[0] + ".json")


def _edit_sidecar(path: Path, **changes) -> None:
    side = _sidecar(path)
    meta = json.loads(side.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    side.write_text(json.dumps(meta))


def _bad_corrupt(ds, sub):
    p = write_subject(ds, sub)["files"]["phase"][1]
    p.write_bytes(b"this is not a NIfTI file" * 10)
    return p


def _bad_truncated(ds, sub):
    p = write_subject(ds, sub)["files"]["phase"][2]
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])  # header readable, data cut
    return p


def _bad_magshape(ds, sub):
    p = write_subject(ds, sub)["files"]["mag"][0]
    _rewrite(p, lambda a: a[:, :, :-1])
    return p


def _bad_magaffine(ds, sub):
    p = write_subject(ds, sub)["files"]["mag"][1]
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    return p


def _bad_echoshape(ds, sub):
    p = write_subject(ds, sub)["files"]["phase"][2]
    _rewrite(p, lambda a: a[:-1])
    return p


def _bad_noechotime(ds, sub):
    files = write_subject(ds, sub)["files"]
    for f in (files["phase"][1], files["mag"][1]):
        _edit_sidecar(f, EchoTime=None)
    return files["phase"][1]


def _bad_decreasing(ds, sub):
    return write_subject(ds, sub, tes=(0.004, 0.014, 0.009))["files"]["phase"][2]


def _bad_negative(ds, sub):
    return write_subject(ds, sub, tes=(-0.004, 0.009, 0.014))["files"]["phase"][0]


def _bad_millisec(ds, sub):
    return write_subject(ds, sub, tes=(4.0, 9.0, 14.0))["files"]["phase"][0]


def _bad_nofield(ds, sub):
    return write_subject(ds, sub, meta={})["files"]["phase"][0]


def _bad_allnan(ds, sub):
    p = write_subject(ds, sub)["files"]["mag"][0]
    _rewrite(p, lambda a: np.full(a.shape, np.nan, np.float32))
    return p


def _bad_allzero(ds, sub):
    p = write_subject(ds, sub)["files"]["mag"][1]
    _rewrite(p, np.zeros_like)
    return p


def _bad_range(ds, sub):
    files = write_subject(ds, sub, encoding="radians")["files"]
    for f in files["phase"]:
        _rewrite(f, lambda a: (500 + 400 * a / np.pi).astype(np.float32))
    return files["phase"][0]


def _bad_flat(ds, sub):
    files = write_subject(ds, sub)["files"]
    for f in files["phase"] + files["mag"]:
        _rewrite(f, lambda a: a[:, :, 5])
    return files["phase"][0]


def _bad_realonly(ds, sub):
    files = write_subject(ds, sub, parts="real-imag")["files"]
    for f in files["imag"]:
        f.unlink()
        _sidecar(f).unlink()
    return files["real"][0]


def _bad_stackcount(ds, sub):
    p = write_subject(ds, sub, layout="4d")["files"]["phase"][0]
    _rewrite(p, lambda a: a[..., :2])
    return p


def _bad_echocount(ds, sub):
    files = write_subject(ds, sub)["files"]
    files["mag"][2].unlink()
    return files["phase"][0].parent


def _bad_badjson(ds, sub):
    p = write_subject(ds, sub)["files"]["mag"][0]
    _sidecar(p).write_text('{"EchoTime": 0.004,')
    return _sidecar(p)


def _bad_nodata(ds, sub):
    anat = ds / f"sub-{sub}" / "anat"
    anat.mkdir(parents=True)
    _save(anat / f"sub-{sub}_T1w.nii.gz", np.ones(SHAPE, np.float32), centred_affine())
    return ds / f"sub-{sub}"


#: label: (writer returning the offending path, problem text expected in the message)
BAD_CASES = {
    "corrupt": (_bad_corrupt, "cannot read NIfTI image (corrupt or truncated?)"),
    "truncated": (_bad_truncated, "cannot read NIfTI image (corrupt or truncated?)"),
    "magshape": (_bad_magshape, "image shape (24, 20, 15) differs from (24, 20, 16)"),
    "magaffine": (_bad_magaffine, "affine differs from that of"),
    "echoshape": (_bad_echoshape, "image shape (23, 20, 16) differs from (24, 20, 16)"),
    "noechotime": (_bad_noechotime, "missing EchoTime (s) in its JSON sidecar"),
    "decreasing": (_bad_decreasing, "echo times are not strictly increasing"),
    "negative": (_bad_negative, "EchoTime -0.004 must be positive"),
    "millisec": (_bad_millisec, "EchoTime 4 looks like milliseconds; BIDS requires seconds"),
    "nofield": (_bad_nofield, "missing both MagneticFieldStrength (T) and ImagingFrequency"),
    "allnan": (_bad_allnan, "magnitude image has no finite values (all NaN/Inf)"),
    "allzero": (_bad_allzero, "magnitude image is all zero"),
    "badrange": (_bad_range, "cannot identify the phase encoding of values 100.."),
    "flat": (_bad_flat, "is a 2D image (shape (24, 20))"),
    "realonly": (_bad_realonly, "part-real image without part-imag images"),
    "stackcount": (_bad_stackcount, "expected a 4D image of 3 echoes"),
    "echocount": (_bad_echocount, "has 3 phase but 2 magnitude echoes"),
    "badjson": (_bad_badjson, "cannot read the JSON sidecar: JSONDecodeError"),
    "nodata": (_bad_nodata, "no MEGRE/T2starw phase images"),
}

#: accepted variants processed end to end next to the good participant
GOOD_CASES = {
    "good": {},
    "stack": {"layout": "4d", "encoding": "radians"},
    "complex": {"parts": "real-imag", "layout": "4d"},
    "tstar": {"suffix": "T2starw", "ext": ".nii", "encoding": "uint"},
    "single": {"tes": (0.012,), "encoding": "slope"},
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The shared dataset, the offending path of each case, and one run of qsm-bids."""
    root = tmp_path_factory.mktemp("inputs")
    ds = root / "bids"
    for i, (sub, kw) in enumerate(GOOD_CASES.items()):
        write_subject(ds, sub, seed=i, **kw)
    # NaN outside the head: accepted with a note
    info = write_subject(ds, "nanout", seed=9)
    outside = info["mag"][..., 0] < 50
    for f in info["files"]["phase"] + info["files"]["mag"]:
        _rewrite(f, lambda a: np.where(outside, np.nan, a.astype(np.float32)))
    offending = {sub: fn(ds, sub) for sub, (fn, _) in BAD_CASES.items()}
    out = ds / "derivatives" / "qsm_bids"  # inside the dataset's derivatives/: allowed
    labels = [*GOOD_CASES, "nanout", *BAD_CASES]
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main([str(ds), str(out), "participant", "--pipeline", "fast",
                     "--no-registration", "-w", str(root / "work"),
                     "--participant-label", *labels])  # fmt: skip
    seconds = time.monotonic() - start
    # the library alone: find_runs collecting the per-run problems
    invalid: dict[str, str] = {}
    runs = find_runs(ds, labels, invalid=invalid)
    return {
        "ds": ds,
        "out": out,
        "code": code,
        "log": err.getvalue(),
        "offending": offending,
        "seconds": seconds,
        "runs": {r.subject: r for r in runs},
        "invalid": invalid,
    }


def _chimap(out: Path, sub: str) -> Path:
    return out / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz"


@pytest.mark.parametrize("sub", list(BAD_CASES))
def test_bad_input_is_a_clear_error_and_the_run_is_skipped(shared, sub):
    problem = BAD_CASES[sub][1]
    path = str(shared["offending"][sub])
    # the library: find_runs (collecting per-run problems), then validate_run
    if f"sub-{sub}" in shared["invalid"]:
        message = shared["invalid"][f"sub-{sub}"]
        assert sub not in shared["runs"]
    else:
        with pytest.raises(QSMInputError) as exc:
            validate_run(shared["runs"][sub])
        message = str(exc.value)
    assert message.startswith(path + ": ") and problem in message, message
    assert "\n" not in message
    # the command line: skipped with its reason, exit code 2, others processed
    lines = [ln for ln in shared["log"].splitlines() if f"SKIPPED sub-{sub}:" in ln]
    assert lines and path in lines[0] and problem in lines[0], shared["log"]
    assert shared["code"] == 2
    assert "Traceback" not in shared["log"]
    assert not (shared["out"] / f"sub-{sub}").exists()  # nothing written for it
    assert _chimap(shared["out"], "good").is_file()


@pytest.mark.parametrize("sub", [*GOOD_CASES, "nanout"])
def test_accepted_layouts_run_end_to_end(shared, sub):
    chimap = _chimap(shared["out"], sub)
    assert chimap.is_file(), shared["log"]
    for word in ("SKIPPED", "FAILED"):
        assert not any(f"{word} sub-{sub}{c}" in shared["log"] for c in ": ")
    chi = nib.load(chimap)
    assert chi.shape == SHAPE and np.all(np.isfinite(chi.get_fdata()))
    side = json.loads(_sidecar(chimap).read_text())
    if sub == "nanout":
        assert any("non-finite (NaN/Inf) values" in n for n in side["ProcessingNotes"])
    if sub == "complex":
        assert any("real and imaginary" in n for n in side["ProcessingNotes"])
    if sub == "stack":  # the 4D files are the sources
        assert all("_part-" in s and "_echo-" not in s for s in side["Sources"])


def test_valid_runs_are_all_found(shared):
    assert set(shared["runs"]) == {*GOOD_CASES, "nanout", *(s for s in BAD_CASES if s in (
        "corrupt", "truncated", "magshape", "magaffine", "echoshape", "allnan", "allzero",
        "badrange", "flat", "stackcount"))}  # fmt: skip
    for sub in shared["runs"]:
        if sub in GOOD_CASES or sub == "nanout":
            validate_run(shared["runs"][sub])


# --------------------------------------------------------------------------------------
# dataset-level problems: the whole invocation stops with exit code 2, nothing written
# --------------------------------------------------------------------------------------


def _main(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_unknown_participant_label(shared, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _main(capsys, shared["ds"], out, "participant", "--participant-label", "zz")
    assert code == 2 and not out.exists()
    assert f"{shared['ds']}: participant label(s) zz not found in the dataset" in err
    assert "available: " in err and "good" in err and "Traceback" not in err


def test_empty_and_non_bids_directories(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "scan.nii.gz").write_bytes(b"")
    for folder in (empty, other):
        out = tmp_path / "out"
        code, err = _main(capsys, folder, out, "participant")
        assert code == 2 and not out.exists()
        assert f"{folder}: not a BIDS dataset: no dataset_description.json and no sub-*" in err
    # a BIDS folder without any GRE data
    (empty / "dataset_description.json").write_text("{}")
    code, err = _main(capsys, empty, tmp_path / "out", "participant")
    assert code == 2 and f"{empty}: no multi-echo GRE phase images found" in err


def test_output_directory_is_the_input_dataset(shared, capsys):
    before = sorted(p.name for p in shared["ds"].iterdir())
    code, err = _main(capsys, shared["ds"], shared["ds"], "participant")
    assert code == 2
    assert f"{shared['ds']}: output directory is the input BIDS dataset" in err
    assert sorted(p.name for p in shared["ds"].iterdir()) == before


def test_every_run_bad_is_exit_code_2(tmp_path, capsys):
    ds = tmp_path / "ds"
    p = _bad_millisec(ds, "01")
    out = tmp_path / "out"
    code, err = _main(capsys, ds, out, "participant")
    assert code == 2 and not out.exists()
    assert str(p) in err and "looks like milliseconds" in err


def test_find_runs_strict_mode_still_raises(shared):
    with pytest.raises(QSMInputError, match="missing EchoTime"):
        find_runs(shared["ds"], ["good", "noechotime"])


def test_truncated_gzip_passes_header_check_but_fails_validation(tmp_path):
    ds = tmp_path / "ds"
    p = _bad_truncated(ds, "01")
    (run,) = find_runs(ds)
    validate_run(run, read_data=False)  # the header alone is fine
    with pytest.raises(QSMInputError, match="corrupt or truncated"):
        validate_run(run)
    with pytest.raises(QSMInputError, match="corrupt or truncated") as exc:
        load_run(run)
    assert str(p) in str(exc.value)
