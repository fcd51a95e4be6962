"""Tests of qsm_bids.core.phase.scale_phase_to_radians against known encodings."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.phase import scale_phase_to_radians


def _true_phase(shape=(12, 14, 10), seed: int = 0) -> np.ndarray:
    """Wrapped radians in [-pi, pi), covering the full cycle (a linear ramp plus noise).

    A fresh generator per call: the data do not depend on which tests ran before.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ph = 0.9 * x + 0.4 * y - 0.7 * z + rng.normal(0, 0.3, shape)
    return (np.mod(ph + np.pi, 2 * np.pi) - np.pi).astype(np.float32)


def _circ_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute phase difference modulo 2 pi (rad)."""
    return float(np.max(np.abs(np.angle(np.exp(1j * (a.astype(np.float64) - b))))))


def _check_range(ph: np.ndarray) -> None:
    assert ph.dtype == np.float32
    assert ph.min() >= -np.pi
    assert ph.max() < np.pi


def test_radians_kept_exactly():
    truth = _true_phase()
    out, desc = scale_phase_to_radians(truth)
    _check_range(out)
    np.testing.assert_array_equal(out, truth)
    assert "radians" in desc


def test_radians_at_pi_wrapped():
    truth = _true_phase()
    truth[0, 0, 0] = np.float32(np.pi)
    out, _ = scale_phase_to_radians(truth)
    _check_range(out)
    assert out[0, 0, 0] == pytest.approx(-np.pi, abs=1e-6)


def test_radians_zero_to_two_pi():
    truth = _true_phase()
    stored = np.mod(truth, 2 * np.pi)  # [0, 2 pi)
    out, desc = scale_phase_to_radians(stored)
    _check_range(out)
    assert _circ_err(out, truth) < 1e-5
    assert "wrapped" in desc


@pytest.mark.parametrize(
    ("levels", "signed"),
    [(8192, True), (4096, False), (4096, True), (8192, False), (65536, True)],
)
def test_integer_encodings(levels, signed):
    truth = _true_phase()
    k = np.round(truth / (2 * np.pi) * levels).astype(np.int64)  # -N/2 .. N/2
    k = np.where(k >= levels // 2, k - levels, k)  # -N/2 .. N/2 - 1
    if not signed:
        k = np.mod(k, levels)  # 0 .. N - 1
    stored = k.astype(np.int32 if levels > 32768 else np.int16).astype(np.float32)
    out, desc = scale_phase_to_radians(stored)
    _check_range(out)
    # quantisation of the encoding is pi / (N/2) / 2 at most; float32 adds ~1e-6
    assert _circ_err(out, truth) <= np.pi / levels + 2e-6
    assert f"({levels} levels)" in desc
    assert f"phase * pi / {levels // 2}" in desc


def test_dcm2niix_siemens_description():
    truth = _true_phase()
    truth.flat[0], truth.flat[1] = -np.pi, np.pi * 4095 / 4096
    # +pi is the same angle as -pi: level 4096 wraps to -4096, as in the scanner's encoding
    k = (np.round(truth / np.pi * 4096) + 4096) % 8192 - 4096
    out, desc = scale_phase_to_radians(k.astype(np.int16))
    assert desc == "integer phase -4096..4095 (8192 levels) rescaled to radians: phase * pi / 4096"
    assert _circ_err(out, truth) <= np.pi / 8192 + 2e-6


def test_integer_range_not_reaching_extremes():
    # signed data that only reaches -4000..3900 is still the 8192-level encoding
    truth = _true_phase() * 0.95
    k = np.round(truth / np.pi * 4096)
    out, desc = scale_phase_to_radians(k)
    assert "(8192 levels)" in desc
    assert _circ_err(out, truth) <= np.pi / 8192 + 2e-6


def test_scl_slope_scaled_integers():
    # old dcm2niix: stored 0..4095 with scl_slope 2 and scl_inter -4096 -> -4096..4094
    truth = _true_phase()
    raw = np.mod(np.round((truth + np.pi) / np.pi * 2048), 4096)  # 0..4095 on disk
    scaled = (raw * 2.0 - 4096.0).astype(np.float32)  # nibabel applies slope/intercept
    out, desc = scale_phase_to_radians(scaled)
    assert "(8192 levels)" in desc
    assert _circ_err(out, truth) <= np.pi / 4096 + 2e-6


def test_real_data_arbitrary_units():
    # values seen in a real dataset with "Units": "arbitrary": -0.00367..0.00367 per cycle
    amp = 0.00367
    truth = _true_phase()
    stored = truth / np.pi * amp
    stored.flat[0], stored.flat[1] = -amp, amp * (1 - 1e-6)
    truth.flat[0], truth.flat[1] = -np.pi, np.pi * (1 - 1e-6)
    out, desc = scale_phase_to_radians(stored.astype(np.float32), units="arbitrary")
    _check_range(out)
    assert _circ_err(out, truth) < 1e-5
    assert "arbitrary units" in desc and "phase * pi / 0.00367" in desc
    # the same values without a sidecar hint are recognised too
    out2, _ = scale_phase_to_radians(stored.astype(np.float32))
    np.testing.assert_allclose(out2, out)


def test_arbitrary_zero_based():
    truth = _true_phase()
    stored = np.mod(truth, 2 * np.pi) / (2 * np.pi)  # 0..1 (one cycle)
    stored.flat[0], truth.flat[0] = 1.0 - 1e-6, -2e-6 * np.pi  # a voxel at the top of the range
    out, desc = scale_phase_to_radians(stored)
    assert _circ_err(out, truth) < 1e-5
    assert "phase * 2 pi / " in desc


def test_small_span_hint():
    # within [-pi, pi] but spanning < 5 rad: radians only when the sidecar says "rad"
    data = np.linspace(-1, 1, 1000, dtype=np.float32)
    out, desc = scale_phase_to_radians(data, units="rad")
    np.testing.assert_array_equal(out, data)
    assert "less than one cycle" in desc
    for units in ("", "arbitrary"):
        out, desc = scale_phase_to_radians(data, units=units)
        np.testing.assert_allclose(out[:-1], data[:-1] * np.pi, atol=1e-6)
        assert out[-1] == pytest.approx(-np.pi) and "arbitrary" in desc  # +1 -> pi == -pi


def test_non_finite_ignored_and_zeroed():
    truth = _true_phase()
    k = np.round(truth / np.pi * 4096)
    k[0, 0, :3] = np.nan
    k[1, 1, 1] = np.inf
    out, desc = scale_phase_to_radians(k)
    assert np.all(np.isfinite(out))
    assert np.all(out[0, 0, :3] == 0) and out[1, 1, 1] == 0
    assert "4 non-finite values set to 0" in desc
    assert "(8192 levels)" in desc


def test_four_d_input_shares_one_mapping():
    truth = np.stack([_true_phase(), _true_phase()], axis=-1)
    k = np.round(truth / np.pi * 4096)
    out, _ = scale_phase_to_radians(k)
    assert out.shape == truth.shape
    assert _circ_err(out, truth) <= np.pi / 8192 + 2e-6


def test_input_not_modified():
    k = np.round(_true_phase() / np.pi * 4096).astype(np.float32)
    before = k.copy()
    scale_phase_to_radians(k)
    np.testing.assert_array_equal(k, before)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((4, 4, 4)), "constant"),
        (np.full((4, 4, 4), 7.5), "constant"),
        (np.full((4, 4, 4), np.nan), "no finite values"),
        (np.linspace(100.5, 900.5, 64).reshape(4, 4, 4), "cannot identify the phase encoding"),
    ],
)
def test_not_phase_raises(data, match):
    with pytest.raises(ValueError, match=match):
        scale_phase_to_radians(data)
