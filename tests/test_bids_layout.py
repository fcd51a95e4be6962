"""Tests of BIDS discovery (qsm_bids.bids.layout) and loading (qsm_bids.bids.load) on small
synthetic datasets written with nibabel."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm_bids.bids.layout import Run, find_runs, validate_output_dir
from qsm_bids.bids.load import RunData, load_run
from qsm_bids.core.physics import GAMMA_BAR_MHZ_PER_T
from qsm_bids.errors import QSMInputError, RecipeError

SHAPE = (12, 14, 10)
AFFINE = np.array(
    [[-1.0, 0, 0, 5.0], [0, 1.2, 0, -7.0], [0, 0, 1.5, 3.0], [0, 0, 0, 1]], dtype=np.float64
)


def _wrap(x):
    return np.mod(x + np.pi, 2 * np.pi) - np.pi


def _true_phase(te: float, shape=SHAPE) -> np.ndarray:
    """Wrapped phase (rad) of a linear field map: phase0 + 2 pi f TE."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    f_hz = 30.0 * x - 20.0 * y + 45.0 * z  # Hz
    return _wrap(0.3 + 2 * np.pi * f_hz * te)


def write_run(
    root: Path,
    sub: str = "01",
    *,
    ses: str | None = None,
    acq: str | None = None,
    run: str | None = None,
    echoes: tuple[int, ...] = (1, 2, 3),
    tes: tuple[float, ...] | None = None,
    mag: bool = True,
    suffix: str = "MEGRE",
    sidecar_meta: dict | None = None,
    sidecars: bool = True,
    ext: str = ".nii.gz",
) -> dict:
    """Write one run's echoes (phase as dcm2niix int16 -4096..4095) and sidecars.

    Returns a dict with the true phase (X, Y, Z, E) in rad, the files and the echo times.
    """
    root.mkdir(parents=True, exist_ok=True)
    desc = root / "dataset_description.json"
    if not desc.exists():
        desc.write_text(json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    tes = tes if tes is not None else tuple(0.004 + 0.005 * i for i in range(len(echoes)))
    meta = {"MagneticFieldStrength": 3.0} if sidecar_meta is None else sidecar_meta
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    ents = [f"sub-{sub}"] + [f"{k}-{v}" for k, v in (("ses", ses), ("acq", acq), ("run", run)) if v]
    prefix = "_".join(ents)
    truths, phase_files, mag_files = [], [], []
    for echo, te in zip(echoes, tes, strict=True):
        truth = _true_phase(te)
        truths.append(truth)
        stored = np.clip(np.round(truth / np.pi * 4096), -4096, 4095).astype(np.int16)
        stored.flat[0], stored.flat[1] = -4096, 4095  # the full range, as in real data
        truth.flat[0], truth.flat[1] = -np.pi, np.pi * 4095 / 4096
        parts = [("phase", stored)]
        if mag:
            parts.append(("mag", (1000 * np.exp(-te / 0.04) * np.ones(SHAPE)).astype(np.int16)))
        for part, data in parts:
            name = f"{prefix}_echo-{echo}_part-{part}_{suffix}"
            img = nib.Nifti1Image(data, AFFINE)
            path = folder / f"{name}{ext}"
            nib.save(img, path)
            (phase_files if part == "phase" else mag_files).append(path)
            if sidecars:
                (folder / f"{name}.json").write_text(json.dumps({"EchoTime": te, **meta}))
    return {
        "phase": np.stack(truths, axis=-1),
        "phase_files": phase_files,
        "mag_files": mag_files,
        "tes": tes,
    }


def _circ_err(a, b) -> float:
    return float(np.max(np.abs(np.angle(np.exp(1j * (a.astype(np.float64) - b))))))


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------------------
# errors module
# --------------------------------------------------------------------------------------


def test_error_message_format():
    err = QSMInputError(Path("/data/x.nii.gz"), "cannot read\n  it")
    assert str(err) == "/data/x.nii.gz: cannot read it"
    assert err.path == Path("/data/x.nii.gz") and err.problem == "cannot read it"
    assert str(QSMInputError(None, "no path")) == "no path"
    assert isinstance(RecipeError("r.toml", "bad"), QSMInputError)
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


# --------------------------------------------------------------------------------------
# find_runs
# --------------------------------------------------------------------------------------


def test_find_single_run(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, echoes=(1, 2, 10), tes=(0.004, 0.009, 0.014))
    before = _snapshot(ds)
    runs = find_runs(ds)
    assert len(runs) == 1
    r = runs[0]
    assert isinstance(r, Run)
    assert (r.subject, r.session, r.acquisition, r.run, r.suffix) == (
        "01",
        None,
        None,
        None,
        "MEGRE",
    )
    assert r.phase_files == tuple(info["phase_files"])  # echo 10 after echo 2
    assert r.magnitude_files == tuple(info["mag_files"])
    assert r.echo_times == pytest.approx((0.004, 0.009, 0.014))
    assert r.field_strength == 3.0
    assert r.name == "sub-01"
    assert r.entities == {"sub": "01"}
    assert r.warnings == ()
    hash(r)  # frozen and hashable
    assert _snapshot(ds) == before  # nothing written into the input dataset


def test_derivatives_and_other_datatypes_ignored(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, "01")
    # a copy of the run inside derivatives/ and a MEGRE-named file in func/ must be ignored
    write_run(ds / "derivatives" / "other", "01")
    func = ds / "sub-01" / "func"
    func.mkdir()
    (func / "sub-01_echo-1_part-phase_MEGRE.nii.gz").write_bytes(b"")
    (r,) = find_runs(ds)
    assert all(p.parent == ds / "sub-01" / "anat" for p in r.phase_files + r.magnitude_files)


def test_sessions_acq_runs_grouped_separately(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, "01", ses="A", acq="lowres", run="1")
    write_run(ds, "01", ses="A", acq="lowres", run="2")
    write_run(ds, "01", ses="A", acq="hires")
    write_run(ds, "01", ses="B")
    write_run(ds, "02", ses="A", suffix="T2starw")
    runs = find_runs(ds)
    names = [f"{r.name}_{r.suffix}" for r in runs]
    assert names == [
        "sub-01_ses-A_acq-hires_MEGRE",
        "sub-01_ses-A_acq-lowres_run-1_MEGRE",
        "sub-01_ses-A_acq-lowres_run-2_MEGRE",
        "sub-01_ses-B_MEGRE",
        "sub-02_ses-A_T2starw",
    ]
    assert all(len(r.phase_files) == 3 and len(r.magnitude_files) == 3 for r in runs)
    r = runs[1]
    assert (r.session, r.acquisition, r.run) == ("A", "lowres", "1")
    assert all("run-1_" in p.name for p in r.phase_files + r.magnitude_files)


def test_t1w_of_the_same_session_is_found(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, "01", ses="A")
    write_run(ds, "01", ses="B")
    anat = ds / "sub-01" / "ses-A" / "anat"
    t1 = anat / "sub-01_ses-A_T1w.nii.gz"
    nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)).to_filename(t1)
    runs = {r.session: r for r in find_runs(ds)}
    assert runs["A"].t1w == t1
    assert runs["B"].t1w is None


def test_labels_with_and_without_prefix(tmp_path):
    ds = tmp_path / "ds"
    for sub in ("01", "02", "03"):
        write_run(ds, sub, ses="pre")
        write_run(ds, sub, ses="post")
    assert [r.subject for r in find_runs(ds, ["sub-02", "03"])] == ["02", "02", "03", "03"]
    runs = find_runs(ds, ["02"], ["ses-pre"])
    assert [(r.subject, r.session) for r in runs] == [("02", "pre")]
    assert [r.name for r in find_runs(ds, None, ["post"])] == [
        "sub-01_ses-post",
        "sub-02_ses-post",
        "sub-03_ses-post",
    ]


def test_inherited_sidecars(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, "01", sidecars=False)
    write_run(ds, "02", sidecars=False)
    # dataset level: echo times per echo; subject level: the field strength
    for e, te in enumerate(info["tes"], start=1):
        (ds / f"echo-{e}_MEGRE.json").write_text(json.dumps({"EchoTime": te}))
    (ds / "sub-01" / "sub-01_MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 7}))
    (ds / "sub-02" / "sub-02_part-phase_MEGRE.json").write_text(
        json.dumps({"ImagingFrequency": 123.25})
    )
    r1, r2 = find_runs(ds)
    assert r1.echo_times == pytest.approx(info["tes"])
    assert (r1.field_strength, r1.field_strength_source) == (7.0, "MagneticFieldStrength")
    assert r2.field_strength == pytest.approx(123.25 / GAMMA_BAR_MHZ_PER_T)
    # ImagingFrequency is the preferred source, not a fallback: recorded, no warning
    assert r2.field_strength_source == "ImagingFrequency" and not r2.warnings


def test_phase_only_run(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, mag=False)
    (r,) = find_runs(ds)
    assert r.magnitude_files == () and not r.has_magnitude
    assert any("no magnitude" in w for w in r.warnings)


def test_validate_output_dir(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    assert validate_output_dir(ds, tmp_path / "out") == (tmp_path / "out").resolve()
    ok = ds / "derivatives" / "qsm_bids"
    assert validate_output_dir(ds, ok) == ok.resolve()
    for bad in (ds, ds / ".", ds / "sub-01", ds / "derivatives", tmp_path / "x" / ".." / "ds"):
        with pytest.raises(QSMInputError) as exc:
            validate_output_dir(ds, bad)
        assert str(bad) in str(exc.value)


# --------------------------------------------------------------------------------------
# find_runs errors: each names the file or folder
# --------------------------------------------------------------------------------------


def _raises(ds, needle, *args):
    with pytest.raises(QSMInputError) as exc:
        find_runs(ds, *args)
    msg = str(exc.value)
    assert needle in msg, msg
    return msg


def test_error_missing_or_not_bids(tmp_path):
    missing = tmp_path / "nope"
    msg = _raises(missing, "does not exist")
    assert msg.startswith(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _raises(empty, "not a BIDS dataset")
    assert msg.startswith(str(empty))


def test_error_no_phase_data(tmp_path):
    ds = tmp_path / "ds"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text("{}")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE), ds / "sub-01/anat/sub-01_T1w.nii")
    msg = _raises(ds, "no multi-echo GRE phase images found")
    assert str(ds) in msg


def test_error_unknown_participant_lists_available(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, "01")
    write_run(ds, "02")
    msg = _raises(ds, "participant label(s) 07 not found", ["sub-07"])
    assert "available: 01, 02" in msg
    _raises(ds, "session label(s) X not found", None, ["X"])
    # a participant folder without GRE data
    (ds / "sub-03" / "anat").mkdir(parents=True)
    msg = _raises(ds, "no MEGRE/T2starw phase images for participant(s) 03", ["01", "03"])
    assert str(ds / "sub-03") in msg
    _raises(ds, "no multi-echo GRE phase images found", ["03"])


def test_error_missing_echo_time(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    for f in info["phase_files"][1:2] + info["mag_files"][1:2]:
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        side.write_text(json.dumps({"MagneticFieldStrength": 3}))
    msg = _raises(ds, "missing EchoTime")
    assert str(info["phase_files"][1]) in msg


def test_echo_time_from_magnitude_sidecar(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    f = info["phase_files"][1]
    f.with_name(f.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"MagneticFieldStrength": 3})
    )
    (r,) = find_runs(ds)
    assert r.echo_times == pytest.approx(info["tes"])
    # the warning names the file that lacked the key and the twin it came from
    phase, mag = info["phase_files"][1].name, info["mag_files"][1].name
    assert f"EchoTime missing from the sidecar of {phase}: taken from its magnitude twin {mag}" in (
        r.warnings
    )


def test_magnitude_sidecar_completed_from_phase_twin_is_a_warning(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    f = info["mag_files"][2]
    f.with_name(f.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"MagneticFieldStrength": 3})
    )
    (r,) = find_runs(ds)
    assert r.echo_times == pytest.approx(info["tes"])
    twin = [w for w in r.warnings if "missing from the sidecar" in w]
    assert twin == [
        f"EchoTime missing from the sidecar of {f.name}: taken from its phase twin "
        f"{info['phase_files'][2].name}"
    ]
    # a complete dataset has no such warning
    write_run(tmp_path / "ok")
    (r2,) = find_runs(tmp_path / "ok")
    assert not [w for w in r2.warnings if "missing from the sidecar" in w]


def test_error_echo_times_not_increasing(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, tes=(0.004, 0.012, 0.008))
    msg = _raises(ds, "not strictly increasing")
    assert str(info["phase_files"][2]) in msg


def test_error_echo_time_in_ms(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, tes=(20.0, 25.0, 30.0))
    msg = _raises(ds, "EchoTime 20 looks like milliseconds; BIDS requires seconds")
    assert str(info["phase_files"][0]) in msg


def test_error_missing_field_strength(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, sidecar_meta={})
    msg = _raises(ds, "missing both MagneticFieldStrength")
    assert str(info["phase_files"][0]) in msg


def test_error_magnitude_count(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    info["mag_files"][2].unlink()
    msg = _raises(ds, "3 phase but 2 magnitude echoes")
    assert str(info["phase_files"][0].parent) in msg


def test_error_magnitude_echo_mismatch(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    m = info["mag_files"][2]
    m.rename(m.with_name(m.name.replace("echo-3", "echo-4")))
    _raises(ds, "magnitude echo 4 does not match phase echo 3")


def test_error_duplicate_echo(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    p = info["phase_files"][0]
    nib.save(nib.load(p), p.with_name(p.name.replace(".nii.gz", ".nii")))
    _raises(ds, "echo 1 appears twice")


# --------------------------------------------------------------------------------------
# load_run
# --------------------------------------------------------------------------------------


def test_load_run_phase_in_radians(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, ses="A")
    (r,) = find_runs(ds)
    d = load_run(r)
    assert isinstance(d, RunData)
    assert d.phase.shape == (*SHAPE, 3) and d.phase.dtype == np.float32
    assert d.phase.min() >= -np.pi and d.phase.max() < np.pi
    assert _circ_err(d.phase, info["phase"]) <= np.pi / 8192 + 2e-6
    assert d.magnitude is not None and d.magnitude.shape == (*SHAPE, 3)
    assert d.magnitude.dtype == np.float32
    np.testing.assert_allclose(d.magnitude[0, 0, 0, 0], int(1000 * np.exp(-0.004 / 0.04)))
    np.testing.assert_allclose(d.affine, AFFINE)
    assert d.voxel_size == pytest.approx((1.0, 1.2, 1.5))
    np.testing.assert_allclose(np.abs(d.b0_dir), [0, 0, 1], atol=1e-12)
    assert d.echo_times == pytest.approx(info["tes"]) and d.field_strength == 3.0
    assert d.header.get_data_shape() == SHAPE
    assert any("phase * pi / 4096" in n for n in d.notes)


def test_load_phase_only_note(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, mag=False, ext=".nii")
    d = load_run(find_runs(ds)[0])
    assert d.magnitude is None
    assert any(
        n.startswith("no magnitude: masking from phase quality is degraded") for n in d.notes
    )


def test_load_truncated_file(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    bad = info["phase_files"][1]
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    with pytest.raises(QSMInputError) as exc:
        load_run(r)
    assert str(bad) in str(exc.value) and "corrupt or truncated" in str(exc.value)


def test_load_garbage_file(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, ext=".nii")
    (r,) = find_runs(ds)
    info["mag_files"][0].write_bytes(b"not a nifti at all")
    with pytest.raises(QSMInputError, match="cannot read NIfTI") as exc:
        load_run(r)
    assert str(info["mag_files"][0]) in str(exc.value)


def test_load_broken_symlink(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    p = info["phase_files"][2]
    p.unlink()
    os.symlink(tmp_path / "annex" / "missing", p)
    with pytest.raises(QSMInputError, match="broken symbolic link") as exc:
        load_run(r)
    assert str(p) in str(exc.value)


def test_load_shape_mismatch_names_both(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    m = info["mag_files"][1]
    nib.save(nib.Nifti1Image(np.ones((12, 14, 9), np.int16), AFFINE), m)
    with pytest.raises(QSMInputError, match="shape") as exc:
        load_run(r)
    assert str(m) in str(exc.value) and str(info["phase_files"][0]) in str(exc.value)


def test_load_affine_mismatch_names_both(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    p = info["phase_files"][2]
    img = nib.load(p)
    aff = AFFINE.copy()
    aff[0, 3] += 0.01
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    with pytest.raises(QSMInputError, match="affine differs") as exc:
        load_run(r)
    assert str(p) in str(exc.value) and str(info["phase_files"][0]) in str(exc.value)
    # differences within the tolerance are accepted
    aff[0, 3] = AFFINE[0, 3] + 5e-5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    load_run(r)


def test_load_rejects_4d(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    p = info["phase_files"][0]
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.int16), AFFINE), p)
    with pytest.raises(QSMInputError, match="expected a 3D volume") as exc:
        load_run(r)
    assert str(p) in str(exc.value)
    # a trailing singleton dimension is fine
    data = np.asarray(nib.load(info["phase_files"][1]).dataobj)[..., None]
    nib.save(nib.Nifti1Image(data, AFFINE), p)
    assert load_run(r).phase.shape == (*SHAPE, 3)


def test_load_non_finite_values(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, ext=".nii")
    (r,) = find_runs(ds)
    for f, dtype in ((info["phase_files"][0], np.float32), (info["mag_files"][0], np.float32)):
        data = np.asarray(nib.load(f).dataobj).astype(dtype)
        data[3, 3, 3] = np.nan
        data[4, 4, 4] = np.inf
        nib.save(nib.Nifti1Image(data, AFFINE), f)
    d = load_run(r)
    assert np.all(np.isfinite(d.phase)) and np.all(np.isfinite(d.magnitude))
    assert d.phase[3, 3, 3, 0] == 0 and d.magnitude[4, 4, 4, 0] == 0
    note = "2 non-finite (NaN/Inf) values; those voxels set to 0 in every echo and part"
    assert sum(note in n for n in d.notes) == 2  # one note per file
    # the voxels are zeroed in every echo and part (masking then sees background) ...
    assert np.all(d.phase[3, 3, 3] == 0) and np.all(d.magnitude[4, 4, 4] == 0)
    # ... and the other voxels still decode exactly
    truth = info["phase"].copy()
    truth[3, 3, 3] = truth[4, 4, 4] = 0
    assert _circ_err(d.phase, truth) <= np.pi / 8192 + 2e-6


def test_load_not_phase(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds)
    (r,) = find_runs(ds)
    for f in info["phase_files"]:
        nib.save(nib.Nifti1Image(np.full(SHAPE, 7, np.int16), AFFINE), f)
    with pytest.raises(QSMInputError, match="constant") as exc:
        load_run(r)
    assert str(info["phase_files"][0]) in str(exc.value)
