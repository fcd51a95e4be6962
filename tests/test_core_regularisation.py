"""The field's cone inconsistency and the automatic TV weight built on it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.inversion.regularisation import automatic_lambda, cone_inconsistency
from qsm_bids.core.kernels import dipole_kernel

SHAPE = (48, 48, 48)
VOX = (1.0, 1.0, 1.0)


def _ball(shape=SHAPE, radius=20.0) -> np.ndarray:
    c = [(s - 1) / 2 for s in shape]
    g = np.indices(shape).astype(np.float32)
    return sum((g[i] - c[i]) ** 2 for i in range(3)) <= radius**2


def _smooth_chi(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chi = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5).astype(np.float32)
    return 0.05 * chi / chi.std()


def _dipole_field(chi: np.ndarray, b0=(0.0, 0.0, 1.0)) -> np.ndarray:
    """The model field on a 2x padded grid (no wrap-around), cropped back."""
    big = np.zeros([2 * s for s in SHAPE], np.float32)
    big[: SHAPE[0], : SHAPE[1], : SHAPE[2]] = chi
    d = dipole_kernel(big.shape, VOX, b0)
    return np.real(np.fft.ifftn(d * np.fft.fftn(big)))[: SHAPE[0], : SHAPE[1], : SHAPE[2]]


def test_white_noise_gives_its_sd():
    """Parseval: white noise of SD s in the mask has power N s^2 at every k."""
    m = _ball()
    rng = np.random.default_rng(1)
    for sd in (0.001, 0.01):
        noise = rng.normal(0, sd, SHAPE).astype(np.float32)
        assert cone_inconsistency(noise, m, VOX, (0, 0, 1)) == pytest.approx(sd, rel=0.05)


def test_model_field_has_little_on_the_cone_and_noise_is_found_on_top():
    m = _ball()
    chi = _smooth_chi() * m
    field = _dipole_field(chi)
    rms = float(np.sqrt(np.mean(field[m] ** 2)))
    clean = cone_inconsistency(field, m, VOX, (0, 0, 1))
    # only the window's leakage (its spectrum smears the off-cone power over the narrow
    # cone): a fraction of the field's own RMS; added noise comes on top in quadrature
    assert clean < 0.35 * rms
    sd = 0.5 * rms
    noisy = field + np.random.default_rng(2).normal(0, sd, SHAPE).astype(np.float32)
    expected = np.hypot(clean, sd)
    assert cone_inconsistency(noisy, m, VOX, (0, 0, 1)) == pytest.approx(expected, rel=0.1)


def test_inconsistency_a_scalar_map_cannot_explain_is_seen():
    """A field made with another B0 direction (the model is wrong) is inconsistent with
    the assumed one: the measure rises far above the consistent field's."""
    m = _ball()
    chi = _smooth_chi(3) * m
    right = cone_inconsistency(_dipole_field(chi), m, VOX, (0, 0, 1))
    wrong = cone_inconsistency(_dipole_field(chi, b0=(0.0, 0.6, 0.8)), m, VOX, (0, 0, 1))
    assert wrong > 2 * right


def test_automatic_lambda_scales_with_the_error_and_refuses_a_null_field():
    m = _ball()
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 0.002, SHAPE).astype(np.float32)
    lam1, s1 = automatic_lambda(noise, m, VOX, (0, 0, 1), 0.1)
    lam2, s2 = automatic_lambda(3 * noise, m, VOX, (0, 0, 1), 0.1)
    assert lam1 == pytest.approx(0.1 * s1)
    assert lam2 == pytest.approx(3 * lam1, rel=1e-4)
    with pytest.raises(ValueError, match="lambda_ explicitly"):
        automatic_lambda(np.zeros(SHAPE, np.float32), m, VOX, (0, 0, 1), 0.1)
    with pytest.raises(ValueError):
        automatic_lambda(noise, m, VOX, (0, 0, 1), 0.0)


def test_data_weights_discount_a_corrupted_slab():
    """With the inversion's data weights the level is that of the weighted field: a slab
    of garbage that the weights zero does not raise it (unweighted, it dominates)."""
    m = _ball()
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.002, SHAPE).astype(np.float32)
    clean = cone_inconsistency(noise, m, VOX, (0, 0, 1))
    bad = noise.copy()
    bad[:, :, 20:24] += rng.normal(0, 0.2, (48, 48, 4)).astype(np.float32)
    w = np.ones(SHAPE, np.float32)
    w[:, :, 20:24] = 0
    assert cone_inconsistency(bad, m, VOX, (0, 0, 1)) > 10 * clean
    weighted = cone_inconsistency(bad, m, VOX, (0, 0, 1), weights=w)
    assert weighted == pytest.approx(clean, rel=0.25)
