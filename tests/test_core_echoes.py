"""Tests of the multi-echo combination (qsm_bids.core.echoes) against a simulated truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.echoes import (
    combine_weighted_fit,
    gaussian_smooth_normalised,
    mcpc3ds_offset,
    weighted_phase_fit,
)

TE = (0.004, 0.008, 0.012, 0.016)  # s
VOX = (2.0, 2.0, 2.0)  # mm


def simulate(
    noise: float = 0.02,
    p0_amp: float = 2.0,
    p0_mean: float = 0.0,
    te: tuple[float, ...] = TE,
    shape: tuple[int, int, int] = (48, 48, 40),
    seed: int = 0,
):
    """Smooth field (+-100 Hz), smooth offset (+-p0_amp rad), R2* decay, phase noise sigma/m."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    field = 100.0 * np.sin(2 * xx + 0.5) * np.cos(1.5 * yy) * (0.5 + 0.5 * zz)  # Hz
    p0 = p0_mean + p0_amp * np.cos(1.2 * xx + 0.3) * np.sin(yy + zz + 0.4)  # rad
    mask = (xx**2 + yy**2 + zz**2) < 0.8
    r2s = 30.0 + 20.0 * xx  # 1/s
    s0 = 1.0 + 0.3 * yy
    t = np.asarray(te, dtype=np.float32)
    mag = (s0[..., None] * np.exp(-r2s[..., None] * t)).astype(np.float32)
    phase = p0[..., None] + 2 * np.pi * field[..., None] * t
    phase = phase + rng.normal(size=phase.shape) * noise / mag
    return phase.astype(np.float32), mag, mask, field.astype(np.float32), p0.astype(np.float32)


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


@pytest.mark.parametrize(
    ("offset", "bound_hz"),
    [("mcpc3ds", 0.4), ("fit", 0.7)],
)
def test_noisy_field_with_offset(offset: str, bound_hz: float) -> None:
    # p0 spans about 0.5..4.5 rad: crosses +pi, so a wrapped offset would leave 2 pi jumps
    phase, mag, mask, field, _ = simulate(noise=0.02, p0_amp=2.0, p0_mean=2.5)
    f, res = combine_weighted_fit(phase, mag, mask, TE, VOX, offset=offset)
    assert f.dtype == np.float32 and res.dtype == np.float32
    assert f.shape == mask.shape and res.shape == mask.shape
    err = f[mask] - field[mask]
    assert rms(err) < bound_hz  # reached: mcpc3ds 0.23 Hz, fit 0.49 Hz
    assert np.all(f[~mask] == 0) and np.all(res[~mask] == 0)
    # the predicted field SD matches the actual error to within a factor of 2
    ratio = float(np.median(res[mask])) / rms(err)
    assert 0.5 < ratio < 2.0, ratio


def test_none_offset_without_phase0_and_bias_with_it() -> None:
    phase, mag, mask, field, _ = simulate(noise=0.02, p0_amp=0.0)
    f, _ = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="none")
    assert rms(f[mask] - field[mask]) < 0.3  # reached 0.22 Hz (optimal estimator)
    # the same data with a +-2 rad offset: a fit through the origin is biased by tens of Hz
    phase, mag, mask, field, _ = simulate(noise=0.02, p0_amp=2.0)
    f, _ = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="none")
    assert rms(f[mask] - field[mask]) > 5.0


def test_noise_free_near_exact() -> None:
    phase, mag, mask, field, _ = simulate(noise=0.0, p0_amp=2.0, p0_mean=2.5)
    f, _ = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="fit")
    assert np.max(np.abs(f[mask] - field[mask])) < 1e-3  # exact model (float32 rounding)
    f, _ = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="mcpc3ds")
    err = f[mask] - field[mask]
    assert rms(err) < 0.15  # reached 0.06 Hz (smoothing of a smooth offset)
    assert np.max(np.abs(err)) < 1.0  # reached 0.65 Hz at the mask edge
    phase, mag, mask, field, _ = simulate(noise=0.0, p0_amp=0.0)
    f, _ = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="none")
    assert np.max(np.abs(f[mask] - field[mask])) < 1e-3


def test_phase_only_equal_weights() -> None:
    phase, _, mask, field, _ = simulate(noise=0.02, p0_amp=2.0)
    for offset, bound in (("mcpc3ds", 0.6), ("fit", 1.0)):
        f, _ = combine_weighted_fit(phase, None, mask, TE, VOX, offset=offset)
        assert rms(f[mask] - field[mask]) < bound  # reached 0.23 / 0.51 Hz


def test_magnitude_weighting_beats_equal_weights() -> None:
    # strong decay: late echoes are noisy, equal weights let them dominate
    te = (0.005, 0.015, 0.025, 0.035)
    phase, mag, mask, field, _ = simulate(noise=0.03, p0_amp=0.0, te=te)
    fw, _ = combine_weighted_fit(phase, mag, mask, te, VOX, offset="none")
    fu, _ = combine_weighted_fit(
        phase, mag, mask, te, VOX, offset="none", magnitude_weighting=False
    )
    # reached 0.25 Hz vs 0.28 Hz
    assert rms(fw[mask] - field[mask]) < 0.95 * rms(fu[mask] - field[mask])


def test_noise_map_flags_corrupted_voxels() -> None:
    phase, mag, mask, _, _ = simulate(noise=0.01, p0_amp=2.0)
    idx = np.argwhere(mask)[::97]
    bad = np.zeros(mask.shape, bool)
    bad[tuple(idx.T)] = True
    phase[bad, 2] += 2.0  # a phase error of 2 rad in echo 3 only
    good = mask & ~bad
    for offset in ("mcpc3ds", "fit"):
        _, res = combine_weighted_fit(phase, mag, mask, TE, VOX, offset=offset)
        # a 2 rad error in one echo inflates the predicted field SD by two orders
        assert float(np.median(res[bad])) > 10 * float(np.median(res[good]))
        assert float(np.min(res[bad])) > float(np.percentile(res[good], 99))


def test_single_echo_falls_back_to_origin_fit() -> None:
    phase, mag, mask, field, _ = simulate(noise=0.0, p0_amp=0.0, te=(0.01,))
    f, res = combine_weighted_fit(phase, mag, mask, (0.01,), VOX, offset="none")
    assert np.max(np.abs(f[mask] - field[mask])) < 1e-3
    # no residual with one echo: SD from the assumed SNR of 100, larger where m is smaller
    assert np.all(res[~mask] == 0) and np.all(res[mask] > 0)
    m1 = mag[..., 0]
    lo, hi = mask & (m1 < np.percentile(m1[mask], 20)), mask & (m1 > np.percentile(m1[mask], 80))
    assert float(np.median(res[lo])) > float(np.median(res[hi]))
    with pytest.warns(UserWarning, match="2 echoes"):
        f2, _ = combine_weighted_fit(phase, mag, mask, (0.01,), VOX, offset="mcpc3ds")
    np.testing.assert_array_equal(f, f2)


def test_two_echoes() -> None:
    te = (0.005, 0.010)
    phase, mag, mask, field, _ = simulate(noise=0.0, p0_amp=2.0, te=te)
    f, _ = combine_weighted_fit(phase, mag, mask, te, VOX, offset="fit")
    assert np.max(np.abs(f[mask] - field[mask])) < 2e-3
    f, _ = combine_weighted_fit(phase, mag, mask, te, VOX, offset="mcpc3ds")
    assert rms(f[mask] - field[mask]) < 0.3  # reached 0.08 Hz


def test_mcpc3ds_offset_recovers_phase0() -> None:
    phase, mag, mask, _, p0 = simulate(noise=0.02, p0_amp=2.0, p0_mean=2.5)
    est = mcpc3ds_offset(phase, mag, mask, TE, VOX)
    assert est.dtype == np.float32
    err = est[mask] - p0[mask]
    assert rms(err) < 0.02  # rad; reached 0.005
    # without detrending (pure normalised convolution) it is still on the right branch
    est = mcpc3ds_offset(phase, mag, mask, TE, VOX, detrend_order=-1)
    err = est[mask] - p0[mask]
    assert np.max(np.abs(err)) < 0.5 and rms(err) < 0.1  # reached max 0.22, rms 0.05 rad


def test_weighted_phase_fit_intercept() -> None:
    rng = np.random.default_rng(3)
    te = np.array([0.003, 0.007, 0.011, 0.015])
    f_true = rng.uniform(-80, 80, 500)
    b_true = rng.uniform(-3, 3, 500)
    ph = b_true[:, None] + 2 * np.pi * f_true[:, None] * te
    f, b, res = weighted_phase_fit(ph, te, intercept=True)
    np.testing.assert_allclose(f, f_true, atol=2e-3)
    np.testing.assert_allclose(b, b_true, atol=1e-4)
    assert float(res.max()) < 1e-4


def test_normalised_smoothing_downsampled_matches_direct() -> None:
    # 1 mm voxels, sigma 5 mm -> the smoothing runs on a 2x coarser grid
    rng = np.random.default_rng(2)
    shape = (60, 56, 48)
    xx, yy, zz = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    val = np.sin(xx / 9.0) + np.cos(yy / 7.0) * zz / 48.0
    w = ((xx - 30) ** 2 / 25**2 + (yy - 28) ** 2 / 22**2 + (zz - 24) ** 2 / 18**2 < 1).astype(
        np.float32
    ) * rng.uniform(0.5, 1.0, shape).astype(np.float32)
    (fast,), _ = gaussian_smooth_normalised([val], w, (1.0, 1.0, 1.0), (5.0, 5.0, 5.0))
    (direct,), _ = gaussian_smooth_normalised(
        [val], w, (1.0, 1.0, 1.0), (5.0, 5.0, 5.0), downsample=False
    )
    num = ndimage.gaussian_filter(w * val, 5.0, mode="constant", truncate=6.0)
    den = ndimage.gaussian_filter(w, 5.0, mode="constant", truncate=6.0)
    ref = num / den
    inside = w > 0
    assert np.max(np.abs(direct[inside] - ref[inside])) < 1e-4  # reached 7e-7
    assert np.max(np.abs(fast[inside] - ref[inside])) < 0.02  # reached 0.006 (range +-2)


def test_nan_outside_mask_does_not_spread() -> None:
    phase, mag, mask, field, _ = simulate(noise=0.0, p0_amp=2.0)
    phase[~mask] = np.nan
    mag[~mask] = np.nan
    f, res = combine_weighted_fit(phase, mag, mask, TE, VOX, offset="mcpc3ds")
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(res))
    assert rms(f[mask] - field[mask]) < 0.15


def test_bad_arguments() -> None:
    phase, mag, mask, _, _ = simulate(noise=0.0, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="offset"):
        combine_weighted_fit(phase, mag, mask, TE, VOX, offset="bogus")
    with pytest.raises(ValueError, match="echo times"):
        combine_weighted_fit(phase, mag, mask, TE[:3], VOX)
