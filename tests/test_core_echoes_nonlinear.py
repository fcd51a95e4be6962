"""Tests of the nonlinear complex multi-echo fit (qsm_bids.core.echoes.nonlinear)."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.echoes import combine_weighted_fit
from qsm_bids.core.echoes.nonlinear import background_noise_sigma, combine_nonlinear_fit

TE = (0.005, 0.010, 0.015, 0.020, 0.025)  # s, not starting at 0
VOX = (2.0, 2.0, 2.0)
SIGMA = 0.05  # complex noise SD per channel
R2S = 25.0  # 1/s


def simulate(te=TE, seed: int = 0, shape=(36, 36, 36)):
    """Ball of tissue (two m0 levels, field 30 +- 20 Hz, phi0 1 +- 0.5 rad, R2* 25 1/s) in
    pure complex-Gaussian background; unwrapped phase = truth + noise angle (ideal unwrap)."""
    rng = np.random.default_rng(seed)
    t = np.asarray(te)
    g = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    x = g[0]
    mask = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 0.7
    f = 30.0 + 20.0 * x
    p0 = 1.0 + 0.5 * x
    m0 = np.where(x > 0, 1.0, 0.4) * mask
    theta = p0[..., None] + 2 * np.pi * f[..., None] * t
    s = m0[..., None] * np.exp(-R2S * t) * np.exp(1j * theta)
    s = s + SIGMA * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape))
    psi = theta + np.angle(s * np.exp(-1j * theta))
    regions = (mask & (x > 0.1), mask & (x < -0.1))
    return psi.astype(np.float32), np.abs(s).astype(np.float32), mask, f, regions, m0


def crb_hz(m0: float, te=TE) -> float:
    """Cramer-Rao SD of f (Hz) for known magnitudes: sigma / (2 pi sqrt(sum m^2 (t - tw)^2))."""
    t = np.asarray(te)
    w = (m0 * np.exp(-R2S * t)) ** 2
    tw = np.sum(w * t) / np.sum(w)
    return SIGMA / (2 * np.pi * np.sqrt(np.sum(w * (t - tw) ** 2)))


@pytest.mark.parametrize("noise", ["residual", "magnitude"])
def test_field_and_noise_map_match_monte_carlo(noise: str) -> None:
    psi, mag, mask, f, regions, _ = simulate()
    field, sd = combine_nonlinear_fit(psi, mag, mask, TE, VOX, noise=noise)
    assert field.dtype == np.float32 and sd.dtype == np.float32
    assert np.all(field[~mask] == 0) and np.all(sd[~mask] == 0) and np.all(sd[mask] > 0)
    for sel, m0 in zip(regions, (1.0, 0.4), strict=True):
        err = field[sel] - f[sel]
        mc_sd = float(err.std())
        # unbiased and efficient (Cramer-Rao); reached |bias| < 0.05 Hz, sd/CRB 0.99-1.03
        assert abs(err.mean()) < 0.1 * mc_sd + 0.01
        assert mc_sd < 1.1 * crb_hz(m0)
        # noise map vs Monte-Carlo SD; reached within 4 % (residual) / 5 % (magnitude)
        assert abs(np.median(sd[sel]) / mc_sd - 1.0) < 0.2


def test_agrees_with_linear_fit_at_high_snr_and_resists_a_2pi_error() -> None:
    psi, mag, mask, f, regions, _ = simulate(seed=1)
    lin, _ = combine_weighted_fit(psi, mag, mask, TE, VOX, offset="fit")
    nl, _ = combine_nonlinear_fit(psi, mag, mask, TE, VOX)
    bright = regions[0]
    assert np.sqrt(np.mean((nl - lin)[bright] ** 2)) < 0.05 * crb_hz(1.0)  # reached 0.001 Hz
    # a 2 pi unwrapping error in the last echo of some voxels
    rng = np.random.default_rng(2)
    bad = mask & (rng.random(mask.shape) < 0.05)
    psi2 = psi.copy()
    psi2[bad, -1] += np.float32(2 * np.pi)
    lin2, _ = combine_weighted_fit(psi2, mag, mask, TE, VOX, offset="fit")
    nl2, _ = combine_nonlinear_fit(psi2, mag, mask, TE, VOX)
    e_lin = np.abs(lin2 - f)[bad & bright]
    e_nl = np.abs(nl2 - f)[bad & bright]
    assert np.median(e_lin) > 5.0  # the linear fit is pulled by 30 Hz (median)
    assert np.median(e_nl) < 3 * crb_hz(1.0)  # reached 0.49 Hz (0.7 CRB)


def test_single_echo_uses_magnitude_noise() -> None:
    te = (0.012,)
    psi, mag, mask, f, regions, m0 = simulate(te=te, seed=3)
    # phase0 cannot be separated: remove it from the data (f = phase / (2 pi TE))
    g = np.meshgrid(*(np.linspace(-1, 1, n) for n in mask.shape), indexing="ij")
    psi = psi - (1.0 + 0.5 * g[0])[..., None].astype(np.float32)
    with pytest.warns(UserWarning, match="single echo"):
        field, sd = combine_nonlinear_fit(psi, mag, mask, te, VOX)
    for sel in regions:
        err = field[sel] - f[sel]
        mc_sd = float(err.std())
        assert abs(err.mean()) < 0.1 * mc_sd + 0.05
        # reached within 4 % of the Monte-Carlo SD
        assert abs(np.median(sd[sel]) / mc_sd - 1.0) < 0.2


def test_two_echoes_and_background_sigma() -> None:
    te = (0.006, 0.014)
    psi, mag, mask, f, regions, _ = simulate(te=te, seed=4)
    sig = background_noise_sigma(mag[..., 0], mask)
    assert sig is not None and abs(sig / SIGMA - 1) < 0.05  # reached 0.3 %
    field, sd = combine_nonlinear_fit(psi, mag, mask, te, VOX)  # "auto" -> magnitude
    for sel in regions:
        err = field[sel] - f[sel]
        assert abs(np.median(sd[sel]) / err.std() - 1.0) < 0.2
    with pytest.raises(ValueError, match="residual"):
        combine_nonlinear_fit(psi, mag, mask, te, VOX, noise="residual")


def test_input_checks() -> None:
    psi, mag, mask, *_ = simulate(shape=(8, 8, 8))
    with pytest.raises(ValueError):
        combine_nonlinear_fit(psi, mag, mask, TE[:3], VOX)
    with pytest.raises(ValueError):
        combine_nonlinear_fit(psi, mag, mask, TE, VOX, noise="bogus")
    with pytest.raises(ValueError):
        combine_nonlinear_fit(psi[..., :2], mag[..., :2], mask, (0.01, 0.01), VOX)
