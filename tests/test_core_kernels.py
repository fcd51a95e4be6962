"""Tests of qsm_bids.core.kernels against analytic dipole fields."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.kernels import b0_direction, dipole_convolve, dipole_kernel


def test_dipole_kernel_values_on_axes() -> None:
    shape, vox = (16, 12, 10), (1.0, 1.5, 2.0)
    d = dipole_kernel(shape, vox, (0.0, 0.0, 1.0), dc=0.25)
    assert d.dtype == np.float32 and d.shape == shape
    assert d[0, 0, 0] == pytest.approx(0.25)
    # k parallel to B0: 1/3 - 1 = -2/3; k perpendicular: 1/3
    np.testing.assert_allclose(d[0, 0, 1:], -2.0 / 3.0, atol=1e-6)
    np.testing.assert_allclose(d[1:, 0, 0], 1.0 / 3.0, atol=1e-6)
    np.testing.assert_allclose(d[0, 1:, 0], 1.0 / 3.0, atol=1e-6)
    # a diagonal wave vector: k = (1/(16*1), 0, 1/(10*2)) cycles/mm
    kx, kz = 1 / 16.0, 1 / 20.0
    assert d[1, 0, 1] == pytest.approx(1 / 3 - kz**2 / (kx**2 + kz**2), abs=1e-6)
    # magic angle: D vanishes where the angle between k and B0 is 54.7 degrees
    b = (1.0, np.sqrt(2.0), 0.0)  # cos^2(angle to the first axis) = 1/3
    d_iso = dipole_kernel((8, 8, 8), (1.0, 1.0, 1.0), b)
    assert abs(d_iso[1, 0, 0]) < 1e-6
    # the real (rfftn) layout is the first half of the full kernel (below the Nyquist plane,
    # whose frequency rfftfreq counts as positive and fftfreq as negative)
    dr = dipole_kernel(shape, vox, (0.2, 0.3, 0.9), real=True)
    df = dipole_kernel(shape, vox, (0.2, 0.3, 0.9))
    assert dr.shape == (16, 12, 6)
    np.testing.assert_allclose(dr[:, :, :5], df[:, :, :5], atol=1e-6)
    # the sign of B0 does not matter
    np.testing.assert_allclose(dipole_kernel(shape, vox, (-0.2, -0.3, -0.9)), df, atol=1e-6)


def test_b0_direction_axial_rotated_flipped() -> None:
    axial = np.diag([0.8, 0.8, 2.0, 1.0])
    np.testing.assert_allclose(b0_direction(axial), [0, 0, 1], atol=1e-12)
    flipped = np.diag([-1.0, 1.0, -1.5, 1.0])  # LAS-like with a flipped slice axis
    np.testing.assert_allclose(b0_direction(flipped), [0, 0, -1], atol=1e-12)
    # slices tilted by 30 degrees about x: the voxel axes are R e_i; B0 seen from the voxel
    # axes is R^T z = (0, sin 30, cos 30)
    t = np.deg2rad(30.0)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.2, 3.0])
    np.testing.assert_allclose(b0_direction(aff), [0, np.sin(t), np.cos(t)], atol=1e-12)
    # coronal acquisition: voxel axes (x, z, -y) in world -> B0 along the second array axis
    cor = np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(b0_direction(cor), [0, 1, 0], atol=1e-12)


def test_dipole_convolve_sphere_matches_analytic_field() -> None:
    n, a, dchi = 48, 6.0, 1.0
    ax = np.arange(n) - n // 2
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    sphere = (r <= a).astype(np.float32) * dchi
    a_eff = (3 * sphere.sum() / (4 * np.pi)) ** (1 / 3)  # radius of the voxelised sphere
    field = dipole_convolve(sphere, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), pad_factor=2.0)
    assert field.dtype == np.float32 and field.shape == sphere.shape
    # Lorentz-corrected field inside a sphere: zero
    inside = r < a - 1.5
    assert abs(float(field[inside].mean())) < 0.01 * dchi
    assert float(np.abs(field[inside]).max()) < 0.05 * dchi
    # outside: (dchi/3) (a/r)^3 (3 cos^2 - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos2 = np.where(r > 0, z**2 / r**2, 0.0)
        truth = dchi / 3 * (a_eff / np.maximum(r, 1e-9)) ** 3 * (3 * cos2 - 1)
    out = (r > 1.5 * a) & (r < n // 2 - 2)
    err = np.linalg.norm(field[out] - truth[out]) / np.linalg.norm(truth[out])
    assert err < 0.03, err
    # on the B0 axis at r = 2a: 2 dchi / 3 / 8
    assert field[n // 2, n // 2, n // 2 + 12] == pytest.approx(2 * dchi / 24, rel=0.05)


@pytest.mark.parametrize("theta_deg", [0.0, 30.0, 54.7356, 90.0])
def test_dipole_convolve_cylinder_inside_field(theta_deg: float) -> None:
    # an infinite cylinder along the third array axis (periodic grid), B0 tilted by theta
    n, a, dchi = 128, 8.0, 1.0
    ax = np.arange(n) - n // 2
    x, y = np.meshgrid(ax, ax, indexing="ij")
    disk = (x**2 + y**2 <= a**2).astype(np.float32)
    chi = np.repeat(disk[:, :, None], 4, axis=2) * dchi
    t = np.deg2rad(theta_deg)
    field = dipole_convolve(chi, (1.0, 1.0, 1.0), (np.sin(t), 0.0, np.cos(t)))
    inside = x**2 + y**2 <= (a - 2.0) ** 2
    frac = disk.mean()  # the zero-DC kernel removes the mean field frac * inside value
    expected = dchi / 6 * (3 * np.cos(t) ** 2 - 1) * (1 - frac)
    got = field[:, :, 0][inside]
    assert float(got.mean()) == pytest.approx(expected, abs=0.01 * dchi)
    assert float(got.std()) < 0.02 * dchi  # staircase edges of the voxelised disk
