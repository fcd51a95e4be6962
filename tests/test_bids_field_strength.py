"""The field strength B0 of a run: from ImagingFrequency (the true field) when present,
MagneticFieldStrength (the nominal one) only as a fallback; the source is recorded."""

from __future__ import annotations

import json

import pytest

from qsm_bids.bids.layout import (
    FIELD_STRENGTH_MISMATCH,
    field_strength_from_metadata,
    find_runs,
)
from qsm_bids.bids.load import load_run
from qsm_bids.errors import QSMInputError
from qsm_bids.interfaces.load import run_from_json, run_to_json
from tests.test_bids_layout import write_run


def test_imaging_frequency_gives_the_true_field(tmp_path):
    """A Siemens "3 T" at 123.2 MHz is 2.8935 T, not 3."""
    ds = tmp_path / "ds"
    write_run(ds, sidecar_meta={"MagneticFieldStrength": 3, "ImagingFrequency": 123.2})
    (r,) = find_runs(ds)
    assert r.field_strength == pytest.approx(2.8935, abs=1e-4)
    assert r.field_strength_source == "ImagingFrequency"
    assert not any(w.startswith(FIELD_STRENGTH_MISMATCH) for w in r.warnings)
    # the source travels with the run to the loaded data (and so to the sidecars)
    again = run_from_json(run_to_json(r))
    assert again == r and again.field_strength_source == "ImagingFrequency"
    d = load_run(r)
    assert d.field_strength == pytest.approx(2.8935, abs=1e-4)
    assert d.field_strength_source == "ImagingFrequency"


def test_magnetic_field_strength_is_the_fallback(tmp_path):
    ds = tmp_path / "ds"
    write_run(ds, sidecar_meta={"MagneticFieldStrength": 3})
    (r,) = find_runs(ds)
    assert r.field_strength == 3.0 and r.field_strength_source == "MagneticFieldStrength"
    assert load_run(r).field_strength_source == "MagneticFieldStrength"


def test_imaging_frequency_in_the_magnitude_sidecar_is_used(tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, sidecar_meta={"MagneticFieldStrength": 3})
    for f in info["mag_files"]:
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "ImagingFrequency": 123.2}))
    (r,) = find_runs(ds)
    assert r.field_strength_source == "ImagingFrequency"
    assert r.field_strength == pytest.approx(123.2 / 42.57747892, rel=1e-12)


def test_disagreeing_values_use_imaging_frequency_with_a_warning(tmp_path):
    """7 T nominal but a 3 T frequency (a copied sidecar): 59 % apart, beyond the 15 %
    tolerance: ImagingFrequency is used and the warning names the file and both values."""
    ds = tmp_path / "ds"
    info = write_run(ds, sidecar_meta={"MagneticFieldStrength": 7, "ImagingFrequency": 123.2})
    (r,) = find_runs(ds)
    assert r.field_strength == pytest.approx(2.8935, abs=1e-4)
    assert r.field_strength_source == "ImagingFrequency"
    (warn,) = [w for w in r.warnings if w.startswith(FIELD_STRENGTH_MISMATCH)]
    assert info["phase_files"][0].name in warn
    assert "123.2 MHz" in warn and "7 T" in warn and "2.8935 T" in warn


@pytest.mark.parametrize(
    ("nominal", "freq", "mismatch"),
    [
        (1.5, 63.6, False),  # a 1.494 T "1.5 T": 0.4 % apart
        (3.0, 123.2, False),  # Siemens "3 T": 3.5 %
        (3.0, 109.0, False),  # 2.56 T: 14.7 %, inside the tolerance
        (3.0, 108.0, True),  # 2.54 T: 15.4 %, outside
        (7.0, 297.2, False),
        (1.5, 127.7, True),  # a 3 T frequency with a 1.5 T label
    ],
)
def test_tolerance_of_the_consistency_check(nominal, freq, mismatch, tmp_path):
    b0, source, warn = field_strength_from_metadata(
        {"MagneticFieldStrength": nominal, "ImagingFrequency": freq}, tmp_path / "x.nii"
    )
    assert b0 == pytest.approx(freq / 42.57747892, rel=1e-12)
    assert source == "ImagingFrequency"
    assert (warn is not None) is mismatch
    if warn:
        assert warn.startswith(FIELD_STRENGTH_MISMATCH) and "x.nii" in warn


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"MagneticFieldStrength": 3, "ImagingFrequency": 1.0}, "not a plausible proton"),
        ({"ImagingFrequency": 5000.0}, "not a plausible proton"),
        ({"MagneticFieldStrength": 3, "ImagingFrequency": "fast"}, "'fast' is not a number"),
        ({"MagneticFieldStrength": 300, "ImagingFrequency": 123.2}, "not a plausible field"),
        ({}, "missing both MagneticFieldStrength"),
    ],
)
def test_implausible_values_are_errors_naming_the_file(meta, needle, tmp_path):
    ds = tmp_path / "ds"
    info = write_run(ds, sidecar_meta=meta)
    with pytest.raises(QSMInputError) as exc:
        find_runs(ds)
    assert needle in str(exc.value) and str(info["phase_files"][0]) in str(exc.value)


def test_simulated_sidecars_are_consistent(tmp_path):
    """The simulator writes both keys; its ImagingFrequency is its field strength's
    Larmor frequency, so the loader reads back the simulated field without a warning."""
    from qsm_bids.simulate.dataset import simulate_dataset

    bids = simulate_dataset(tmp_path / "bids", resolution_mm=6.0, field_strength_t=7.0, snr=30)
    side = json.loads(
        (bids / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.json").read_text()
    )
    assert side["MagneticFieldStrength"] == 7.0
    assert side["ImagingFrequency"] == pytest.approx(7.0 * 42.57747892, abs=1e-6)
    (r,) = find_runs(bids)
    assert r.field_strength == pytest.approx(7.0, abs=1e-6)
    assert r.field_strength_source == "ImagingFrequency"
    assert not any(w.startswith(FIELD_STRENGTH_MISMATCH) for w in r.warnings)


def test_participant_logs_the_field_strength_and_records_its_source(tmp_path, capsys):
    """The participant level says where B0 came from (console and log file), warns about
    a disagreement, and the Chimap sidecar records the field and its source."""
    from qsm_bids.cli.main import main
    from tests.test_cli import _tiny_bids

    bids = _tiny_bids(tmp_path / "bids")
    for side in (bids / "sub-01" / "anat").glob("*.json"):
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "MagneticFieldStrength": 7, "ImagingFrequency": 123.2}))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--pipeline", "fast",
                 "-w", str(tmp_path / "work"), "--no-registration"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "sub-01: field strength 2.8935 T from ImagingFrequency" in err
    assert f"sub-01: {FIELD_STRENGTH_MISMATCH}" in err
    (log_file,) = (out / "logs").glob("*.log")
    text = log_file.read_text()
    assert (
        "field strength 2.8935 T from ImagingFrequency" in text and FIELD_STRENGTH_MISMATCH in text
    )
    side = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert side["MagneticFieldStrength"] == pytest.approx(2.8935, abs=1e-4)
    assert side["FieldStrengthSource"] == "ImagingFrequency"
    assert any(n.startswith(FIELD_STRENGTH_MISMATCH) for n in side["ProcessingNotes"])
