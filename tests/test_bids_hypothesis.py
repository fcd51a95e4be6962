"""Property-based test of BIDS discovery and loading on random small datasets.

Random shapes, voxel sizes, orientations (permutations and flips of the affine), 1-5
echoes, phase encodings (radians, dcm2niix integers, NIfTI scl_slope), layouts (3D file per
echo or one 4D file per part), parts (magnitude/phase, phase only, real/imaginary), file
extensions and suffixes. A valid dataset must load consistently; a dataset with one random
defect must either load consistently or fail with :class:`QSMInputError`, never with
another exception.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsm_bids.bids.layout import find_runs
from qsm_bids.bids.load import load_run, validate_run
from qsm_bids.errors import QSMInputError
from tests.test_bids_inputs import circ_err, make_signal, write_subject

#: Largest phase error (rad) of each encoding (integers: half a quantisation step).
TOLERANCE = {
    "radians": 1e-5,
    "int": np.pi / 4096 + 1e-5,
    "uint": np.pi / 4096 + 1e-5,
    "slope": 2e-4,
    "slope_int": np.pi / 4096 + 1e-5,
}
DEFECTS = ("truncate", "te_order", "nan_fill", "nan_some", "zero_fill", "drop_field", "ms", "shape")


@st.composite
def datasets(draw):
    shape = tuple(draw(st.integers(4, 9)) for _ in range(3))
    vox = [draw(st.sampled_from([0.7, 1.0, 1.5, 2.2])) for _ in range(3)]
    perm = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    affine = np.zeros((4, 4))
    for axis, (world, sign) in enumerate(zip(perm, signs, strict=True)):
        affine[world, axis] = sign * vox[axis]  # voxel axis -> world axis, maybe flipped
    affine[:3, 3] = [draw(st.floats(-50, 50, allow_subnormal=False)) for _ in range(3)]
    affine[3, 3] = 1.0
    n_echo = draw(st.integers(1, 5))
    steps = [draw(st.floats(0.001, 0.01)) for _ in range(n_echo)]
    tes = tuple(float(round(t, 6)) for t in np.cumsum(steps))
    parts = draw(st.sampled_from(["mag-phase", "phase", "real-imag"]))
    encoding = draw(st.sampled_from(sorted(TOLERANCE)))
    return {
        "shape": shape,
        "affine": affine,
        "tes": tes,
        "parts": parts,
        "encoding": "radians" if parts == "real-imag" else encoding,
        "layout": draw(st.sampled_from(["echo", "4d"])),
        "ext": draw(st.sampled_from([".nii", ".nii.gz"])),
        "suffix": draw(st.sampled_from(["MEGRE", "T2starw"])),
        "seed": draw(st.integers(0, 2**16)),
        "defect": draw(st.sampled_from((None, None, None, *DEFECTS))),
        "victim": draw(st.integers(0, 100)),
    }


def _apply_defect(defect: str, files: list[Path], victim: int) -> None:
    path = files[victim % len(files)]
    if defect == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif defect in ("nan_fill", "nan_some", "zero_fill", "shape"):
        img = nib.load(path)
        data = np.asarray(img.get_fdata(), dtype=np.float32)
        if defect == "shape":
            data = data[:-1]
        elif defect == "nan_some":  # accepted: set to 0 with a note
            data[1, 2, 3] = np.nan
            data[0, 0, 0] = np.inf
        else:
            data[...] = np.nan if defect == "nan_fill" else 0.0
        nib.save(nib.Nifti1Image(data, img.affine), path)
    else:
        for f in files:
            s = f.with_name(f.name.split(".")[0] + ".json")
            meta = json.loads(s.read_text())
            te = meta["EchoTime"]
            if defect == "te_order":
                meta["EchoTime"] = te[::-1] if isinstance(te, list) else -te
            elif defect == "ms":
                meta["EchoTime"] = [t * 1000 for t in te] if isinstance(te, list) else te * 1000
            else:  # drop_field
                meta.pop("MagneticFieldStrength")
            s.write_text(json.dumps(meta))


def _check_loaded(d, case: dict, mag: np.ndarray, phase: np.ndarray, exact: bool) -> None:
    n = len(case["tes"])
    # a 'shape' defect of the only file of a run is a valid smaller dataset
    shape = case["shape"] if case["defect"] != "shape" else d.phase.shape[:3]
    assert d.phase.shape == (*shape, n) and d.phase.dtype == np.float32
    assert np.all(np.isfinite(d.phase))
    assert d.phase.min() >= -np.pi and d.phase.max() < np.pi
    assert d.echo_times == case["tes"]
    assert d.field_strength == 3.0
    np.testing.assert_allclose(d.affine, case["affine"], atol=1e-4)  # stored as float32
    assert d.header.get_data_shape()[:3] == shape and len(d.header.get_data_shape()) == 3
    if case["parts"] == "phase":
        assert d.magnitude is None
    else:
        assert d.magnitude.shape == (*shape, n) and d.magnitude.min() >= 0
    if exact:  # no defect: the values are the truth
        assert circ_err(d.phase, phase) <= TOLERANCE[case["encoding"]]
        if d.magnitude is not None:
            np.testing.assert_allclose(d.magnitude, mag, rtol=1e-4, atol=1e-2)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=datasets())
def test_random_datasets_load_consistently_or_fail_cleanly(case):
    mag, phase = make_signal(case["shape"], case["tes"], case["seed"])
    phase.flat[2] = 0.0  # integer encodings see the whole range
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        info = write_subject(
            ds,
            "01",
            shape=case["shape"],
            affine=case["affine"],
            tes=case["tes"],
            signal=(mag, phase),
            parts=case["parts"],
            encoding=case["encoding"],
            layout=case["layout"],
            ext=case["ext"],
            suffix=case["suffix"],
        )
        files = [f for fs in info["files"].values() for f in fs]
        if case["defect"]:
            _apply_defect(case["defect"], files, case["victim"])
        try:
            (run,) = find_runs(ds)
            notes = validate_run(run)
        except QSMInputError as exc:
            assert case["defect"] not in (None, "nan_some"), f"valid dataset refused: {exc}"
            assert str(exc).startswith(str(ds)), str(exc)  # names a file of the dataset
            assert "\n" not in str(exc)
            return
        d = load_run(run)  # what validate_run accepts loads
        assert isinstance(notes, list)
        if case["defect"] == "nan_some":
            assert any("non-finite" in n for n in notes) and np.all(d.phase[1, 2, 3] == 0)
        assert run.echo_times == case["tes"] and len(run.phase_files) == len(case["tes"])
        _check_loaded(d, case, mag, phase, exact=not case["defect"])
