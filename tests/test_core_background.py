"""Tests of qsm_bids.core.background (V-SHARP, PDF) on a brain-like phantom with known chi.

The phantom (64^3 voxels of 3 mm): a head ellipsoid (chi 0) surrounded by air (+9.4 ppm) with
an air-filled sinus below the brain, and a brain-like ellipsoid mask holding five spheres /
ellipsoids of 0.2 to -0.05 ppm. The total field is ``D * chi_all`` and the true local field
``D * chi_inside_mask``, both by :func:`kernels.dipole_convolve` on a 2x zero-padded grid.

The air distribution is smoothed (Gaussian, sigma 1 voxel, zero inside the brain): the
k-space dipole kernel applied to a voxel-sharp 9.4 ppm edge rings (Gibbs) through the whole
grid, and for an oblique B0 that ringing is a non-harmonic field of ~0.2 ppm inside the
mask, a simulation artefact no background removal method can or should remove.

NRMSE (%) = 100 ||(x - mean x) - (t - mean t)|| / ||t - mean t|| over the returned mask
(demeaned, no detrending). Values reached with the default parameters when these bounds were
set: V-SHARP 14.4 (axial) and 16.5 (oblique); PDF 31.3 (axial) and 30.4 (oblique), 32.5 on a
slab (95.8 without padding); doing nothing about 5000-6000.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsm_bids.core import kernels
from qsm_bids.core.background import pdf, vsharp

SHAPE = (64, 64, 64)
VOX = (3.0, 3.0, 3.0)
AXIAL = (0.0, 0.0, 1.0)
OBLIQUE = (0.3, 0.2, 0.93)


def _ellipsoid(center_mm: tuple, semi_mm: tuple) -> np.ndarray:
    axes = [(np.arange(n) - (n - 1) / 2) * d for n, d in zip(SHAPE, VOX, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    return sum(((g - c) / s) ** 2 for g, c, s in zip(grid, center_mm, semi_mm, strict=True)) <= 1


def _phantom(b0: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Total field (ppm), true local field (ppm) and brain mask."""
    head = _ellipsoid((0, 0, 5), (75, 92, 80))
    brain = _ellipsoid((0, 0, 12), (62, 78, 58))
    sinus = _ellipsoid((0, 40, -62), (16, 12, 12))
    air = np.where(~head | sinus, 9.4, 0.0).astype(np.float32)
    air = ndi.gaussian_filter(air, 1.0, truncate=2.0)
    assert air[brain].max() == 0.0
    chi_in = np.zeros(SHAPE, dtype=np.float32)
    for center, semi, value in [
        ((-20, 10, 15), (12, 12, 12), 0.15),
        ((22, -15, 5), (9, 14, 9), 0.10),
        ((0, 30, 30), (10, 8, 8), -0.05),
        ((5, -40, 20), (7, 7, 7), 0.20),
        ((-25, -30, -10), (10, 10, 14), 0.08),
    ]:
        chi_in[_ellipsoid(center, semi)] = value
    chi_in *= brain
    total = kernels.dipole_convolve(air + chi_in, VOX, b0, pad_factor=2)
    local = kernels.dipole_convolve(chi_in, VOX, b0, pad_factor=2)
    return total, local, brain


@pytest.fixture(scope="module")
def axial() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _phantom(AXIAL)


@pytest.fixture(scope="module")
def oblique() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _phantom(OBLIQUE)


def _nrmse(x: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    xv = x[mask].astype(np.float64)
    tv = t[mask].astype(np.float64)
    xv -= xv.mean()
    tv -= tv.mean()
    return float(100.0 * np.linalg.norm(xv - tv) / np.linalg.norm(tv))


def _check_output(local: np.ndarray, out_mask: np.ndarray, in_mask: np.ndarray) -> None:
    assert local.dtype == np.float32 and local.shape == in_mask.shape
    assert out_mask.dtype == bool and out_mask.shape == in_mask.shape
    assert np.all(local[~out_mask] == 0)
    assert np.all(np.isfinite(local))
    assert not np.any(out_mask & ~in_mask)


@pytest.mark.parametrize(("case", "bound"), [("axial", 18.0), ("oblique", 21.0)])
def test_vsharp_removes_background(case: str, bound: float, request) -> None:
    total, local, brain = request.getfixturevalue(case)
    b0 = AXIAL if case == "axial" else OBLIQUE
    out, mask = vsharp(total, brain, VOX, b0)
    _check_output(out, mask, brain)
    err = _nrmse(out, local, mask)
    nothing = _nrmse(total, local, mask)
    assert err < bound
    assert nothing > 100 * err  # the background is orders of magnitude larger


def test_vsharp_mask_eroded_by_smallest_radius(axial) -> None:
    total, local, brain = axial
    out, mask = vsharp(total, brain, VOX, AXIAL, radii_mm=(12.0, 6.0))
    _check_output(out, mask, brain)
    depth = ndi.distance_transform_edt(brain, sampling=VOX)  # mm to the nearest outside voxel
    r_min = 6.0
    assert np.all(depth[mask] > r_min)  # every kept voxel's 6 mm sphere is in the mask
    assert np.all(mask[depth > r_min + 2 * VOX[0]])  # and the deep voxels are all kept
    assert 0.6 < mask.sum() / brain.sum() < 0.9
    # radii below the voxel size (single-voxel spheres) are skipped: 2 mm at 3 mm voxels
    out2, mask2 = vsharp(total, brain, VOX, AXIAL, radii_mm=(12.0, 6.0, 2.0))
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_allclose(out2, out, atol=1e-7)
    with pytest.raises(ValueError):
        vsharp(total, brain, VOX, AXIAL, radii_mm=(1.0,))


def test_vsharp_is_linear_and_ignores_b0_and_weights(axial) -> None:
    total, _, brain = axial
    ref, mask = vsharp(total, brain, VOX, AXIAL)
    scaled, mask2 = vsharp(100.0 * total, brain, VOX, OBLIQUE)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_allclose(scaled, 100.0 * ref, rtol=1e-4, atol=1e-5 * np.abs(scaled).max())


@pytest.mark.parametrize(("case", "bound"), [("axial", 36.0), ("oblique", 36.0)])
def test_pdf_removes_background(case: str, bound: float, request) -> None:
    total, local, brain = request.getfixturevalue(case)
    b0 = AXIAL if case == "axial" else OBLIQUE
    out, mask = pdf(total, brain, VOX, b0)
    _check_output(out, mask, brain)
    np.testing.assert_array_equal(mask, brain)  # PDF keeps the mask
    err = _nrmse(out, local, mask)
    assert err < bound
    assert _nrmse(total, local, mask) > 100 * err
    # the mean is kept to a fraction of the local field's spread (not set to zero)
    assert abs(out[mask].mean() - local[mask].mean()) < 0.1 * local[mask].std()


def test_pdf_slab_needs_padding(oblique) -> None:
    """A slab whose mask touches the top and bottom of the field of view: sources beyond
    the FOV are only representable on the padded grid."""
    total, local, brain = oblique
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    sl = (slice(None), slice(None), slice(zs[0] - 1, zs[-1] - 6))
    f, t, m = total[sl], local[sl], brain[sl]
    err = _nrmse(pdf(f, m, VOX, OBLIQUE)[0], t, m)
    err_unpadded = _nrmse(pdf(f, m, VOX, OBLIQUE, padding=0)[0], t, m)
    assert err < 38.0
    assert err_unpadded > err + 20.0


def test_pdf_weights(axial) -> None:
    total, local, brain = axial
    ref, _ = pdf(total, brain, VOX, AXIAL, max_iter=30)
    # constant weights are normalised away
    same, _ = pdf(total, brain, VOX, AXIAL, weights=np.full(SHAPE, 7.0, np.float32), max_iter=30)
    np.testing.assert_allclose(same, ref, atol=1e-4 * np.abs(ref).max())
    # a corrupted region with zero weight is ignored by the fit of the outside sources
    corrupt = total.copy()
    bad = _ellipsoid((0, 0, 12), (62, 78, 58)) & ~_ellipsoid((0, 0, 12), (55, 71, 51))
    bad &= _ellipsoid((0, -60, 12), (40, 30, 40))  # a patch of the rim at the front
    corrupt[bad] += 2.0
    w = np.where(bad, 0.0, 1.0).astype(np.float32)
    good = brain & ~ndi.binary_dilation(bad, iterations=3)
    err_w = _nrmse(pdf(corrupt, brain, VOX, AXIAL, weights=w)[0], local, good)
    err_u = _nrmse(pdf(corrupt, brain, VOX, AXIAL)[0], local, good)
    assert err_w < 35.0
    assert err_u > 10 * err_w
    with pytest.raises(ValueError):
        pdf(total, brain, VOX, AXIAL, weights=-np.ones(SHAPE, np.float32))


def test_background_only_field_is_removed(axial) -> None:
    total, local, brain = axial
    background = total - local
    scale = np.ptp(background[brain])
    for method in (vsharp, pdf):
        out, mask = method(background, brain, VOX, AXIAL)
        assert np.sqrt(np.mean(out[mask] ** 2)) < 1.5e-3 * scale
