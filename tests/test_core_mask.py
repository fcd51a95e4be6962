"""Tests of the brain mask from magnitude (qsm_bids.core.mask) on a synthetic head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.core.mask import magnitude_threshold, mask_from_magnitude, mask_from_phase

REAL_CROP = Path(__file__).resolve().parents[2] / "shared/data/real-7t-crop/sub-crop/anat"


def synthetic_head(vox: float, seed: int = 0, noise: float = 0.03, n_echoes: int = 1):
    """Brain (bumpy ellipsoid, cortex brighter than WM, bias field, dark ventricles, a dark
    vein running to the top surface), a dark CSF/skull layer of ~7 mm, bright scalp of ~6 mm,
    a thin bright bridge from brain to scalp, Rician background noise."""
    rng = np.random.default_rng(seed)
    fov = np.array([150.0, 180.0, 150.0])
    n = np.round(fov / vox).astype(int)
    ax = [(np.arange(k) - (k - 1) / 2) * vox for k in n]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    r = np.sqrt((x / 55) ** 2 + (y / 68) ** 2 + (z / 50) ** 2)
    th = np.arctan2(y, x)
    ph = np.arccos(np.clip(z / np.maximum(np.sqrt(x**2 + y**2 + z**2), 1e-6), -1, 1))
    bump = 1 + 0.04 * np.sin(3 * th) * np.sin(2 * ph) + 0.03 * np.cos(5 * th + 1) * np.sin(3 * ph)
    rb = r / bump
    brain = rb < 1.0
    scalp = (rb >= 1.0 + 7 / 55) & (rb < 1.0 + 13 / 55)
    img = np.zeros(n, np.float32)
    img[brain] = 0.75
    img[brain & (rb > 0.85)] = 0.9  # cortex
    img[scalp] = 1.0
    # a bright bridge (vessel / partial volume) of 2 mm radius through the skull, along x
    bridge = (y**2 + (z - 10) ** 2 < 2.0**2) & (x > 0) & ~brain & (rb < 1.0 + 7 / 55)
    img[bridge] = 0.8
    img *= 1 + 0.2 * x / 75 - 0.15 * z / 75  # receive bias
    vent = (((x - 10) / 8) ** 2 + (y / 25) ** 2 + ((z - 5) / 10) ** 2 < 1) | (
        ((x + 10) / 8) ** 2 + (y / 25) ** 2 + ((z - 5) / 10) ** 2 < 1
    )
    vein = ((x - 5) ** 2 + (y + 20) ** 2 < 3.0**2) & (z > 0) & brain
    img[vent] = 0.08
    img[vein] = 0.1
    decay = np.exp(-np.arange(n_echoes) * 0.3)
    mags = []
    for d in decay:
        c = img * d + noise * (rng.normal(size=n) + 1j * rng.normal(size=n))
        mags.append(np.abs(c).astype(np.float32))
    mag = mags[0] if n_echoes == 1 else np.stack(mags, axis=-1)
    return mag, brain, (vox, vox, vox), vent, vein


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("vox", [2.0, 1.0])
def test_synthetic_head_dice(vox: float) -> None:
    mag, truth, vs, vent, vein = synthetic_head(vox, n_echoes=3 if vox == 2.0 else 1)
    mask = mask_from_magnitude(mag, vs, shrink_voxels=0, fill_slicewise=True)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert dice(mask, truth) > 0.95  # reached 0.9996 at 2 mm and 1 mm
    # nothing of scalp / bridge / background
    assert (mask & ~truth).sum() < 0.005 * truth.sum()
    # dark ventricles (enclosed) filled, the vein (open at the top) mostly filled
    assert mask[vent].mean() > 0.99  # reached 1.0
    assert mask[vein].mean() > 0.8  # reached 0.90


def test_erosion_cuts_the_bridge_to_the_scalp() -> None:
    mag, truth, vs, _, _ = synthetic_head(2.0)
    # without the opening the bridge joins scalp and brain into one component
    assert dice(mask_from_magnitude(mag, vs, erode_mm=0.0), truth) < 0.8  # reached 0.69
    assert dice(mask_from_magnitude(mag, vs, shrink_voxels=0, fill_slicewise=True), truth) > 0.99


def test_shrinking_drops_the_partial_volume_rim() -> None:
    mag, truth, vs, _, _ = synthetic_head(2.0)
    mask = mask_from_magnitude(mag, vs, fill_slicewise=True)  # one voxel off the edge
    inner = ndimage.binary_erosion(truth, iterations=1)
    assert (mask & ~truth).sum() == 0  # nothing outside the brain
    assert mask[inner].mean() > 0.97  # but the brain one voxel in is kept


def test_without_fill_holes_the_ventricles_stay_out() -> None:
    mag, truth, vs, vent, _ = synthetic_head(2.0)
    mask = mask_from_magnitude(mag, vs, fill_holes=False, smooth_mm=0.0, shrink_voxels=0)
    assert mask[vent].mean() < 0.05  # reached 0.0005
    assert dice(mask, truth) > 0.95  # reached 0.988


def test_scale_invariance() -> None:
    mag, truth, vs, _, _ = synthetic_head(2.0)
    a = mask_from_magnitude(mag, vs)
    b = mask_from_magnitude(mag * np.float32(3e-4), vs)
    assert dice(a, b) > 0.999


def test_all_brain_volume() -> None:
    # a crop inside the brain: tissue everywhere, with a dark vein crossing the volume
    rng = np.random.default_rng(1)
    shape = (40, 40, 30)
    xx, yy, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    img = 0.6 + 0.2 * rng.random(shape)
    img[(xx - 20) ** 2 + (yy - 15) ** 2 < 3**2] = 0.15  # vein along z through the volume
    img = img.astype(np.float32)
    mask = mask_from_magnitude(img, (0.5, 0.5, 1.0))
    assert mask.mean() > 0.98  # reached 1.0
    # the vein crosses the whole volume: only slice-wise filling catches it
    assert mask[(xx - 20) ** 2 + (yy - 15) ** 2 < 3**2].mean() > 0.95


def test_threshold_between_background_and_tissue() -> None:
    mag, truth, _, _, _ = synthetic_head(2.0)
    t = magnitude_threshold(mag)
    assert 0.12 < t < 0.5  # noise sigma 0.03 (Rayleigh tail < 0.15); tissue >= 0.6


@pytest.mark.skipif(not REAL_CROP.exists(), reason="real 7T crop not available")
def test_real_7t_crop_all_brain() -> None:
    nib = pytest.importorskip("nibabel")
    imgs = [nib.load(REAL_CROP / f"sub-crop_echo-{e}_part-mag_MEGRE.nii.gz") for e in (1, 2, 3)]
    mag = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs], axis=-1)
    vs = tuple(float(v) for v in imgs[0].header.get_zooms()[:3])
    mask = mask_from_magnitude(mag, vs)
    assert mask.mean() > 0.97  # reached 1.0


def test_phase_only_mask_from_phase_coherence() -> None:
    """Without magnitude, the mask comes from the local coherence of the phase: smooth
    phase where there is signal, noise in air and bone."""
    mag, truth, vs, vent, vein = synthetic_head(2.0)
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in mag.shape], indexing="ij")
    smooth = 6 * x**2 + 4 * y * z + 3 * z  # several wraps over the head
    signal = np.where(mag > 0.3, 1.0, 0.0) * np.exp(1j * smooth)
    noisy = signal + 0.1 * (rng.normal(size=mag.shape) + 1j * rng.normal(size=mag.shape))
    mask = mask_from_phase(np.angle(noisy).astype(np.float32), vs)
    assert (mask & ~truth).sum() < 0.01 * truth.sum()  # no scalp, no background
    inner = ndimage.binary_erosion(truth & ~vent & ~vein, iterations=2)
    assert mask[inner].mean() > 0.97


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ball_opening_on_the_bounding_box_equals_the_whole_grid(seed: int) -> None:
    """The opening's distance transforms run on bounding boxes: same result as on the
    whole grid (blobs touching the border, anisotropic voxels, several components)."""
    from scipy import ndimage as ndi

    from qsm_bids.core.mask import _ball_open_largest

    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((40, 36, 30)), 3)
    fg = noise > 0.02
    fg[:, :, :3] |= noise[:, :, :3] > -0.02  # a slab at the border
    vox, radius = (1.0, 1.2, 2.0), 3.0
    # the whole-grid version
    inside = ndi.distance_transform_edt(fg, sampling=vox) > radius
    lab, n = ndi.label(inside)
    assert n > 1  # several components: the largest is kept
    inside = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    grown = (ndi.distance_transform_edt(~inside, sampling=vox) <= radius) & fg
    lab, n = ndi.label(grown)
    expected = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1 if n > 1 else grown
    result = _ball_open_largest(fg, vox, radius)
    assert result.any() and np.array_equal(result, expected)
