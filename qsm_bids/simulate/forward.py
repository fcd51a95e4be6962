"""Forward model: susceptibility -> field -> multi-echo complex GRE signal.

The model follows the usual QSM forward simulation (e.g. the qsm-forward package of the
QSM-CI project and Marques et al., MRM 2021, "QSM reconstruction challenge 2.0"):

1. the field shift (ppm) is the dipole convolution of the susceptibility, computed on a grid
   zero-padded to twice its size with the susceptibility expressed relative to air, so that
   air and the padding carry no source;
2. the field in Hz is ``ppm * gamma_bar * B0 * 1e-6``;
3. each echo is ``m0 exp(-R2* TE) exp(i (phase0 + 2 pi f TE))`` plus complex Gaussian noise.

The "local field" truth is the field of the susceptibility inside the brain mask only (zero
outside), i.e. what background field removal aims to recover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qsm_bids.core import kernels
from qsm_bids.core.phase import wrap_to_pi
from qsm_bids.core.physics import CHI_AIR_PPM, ppm_to_hz
from qsm_bids.simulate.phantom import HeadPhantom


@dataclass
class Acquisition:
    """A simulated multi-echo GRE acquisition and its field truths.

    Attributes
    ----------
    magnitude : float32 (X, Y, Z, E)
        Magnitude images (same relative units as ``HeadPhantom.m0``).
    phase : float32 (X, Y, Z, E)
        Wrapped phase (rad) in [-pi, pi).
    total_field_hz : float32 (X, Y, Z)
        Field offset of all sources, background included (Hz).
    local_field_hz : float32 (X, Y, Z)
        Field of the sources inside the brain mask only (Hz).
    phase0 : float32 (X, Y, Z)
        Echo-independent phase offset (rad), not wrapped.
    echo_times_s : tuple of floats
        Echo times (s).
    field_strength_t : float
        B0 (T).
    b0_dir : tuple of 3 floats
        Unit B0 direction in voxel-index space used for the simulation.
    noise_sigma : float
        Standard deviation of the noise in each of the real and imaginary channels.
    affine : float64 (4, 4)
        Voxel-to-world affine (that of the phantom).
    """

    magnitude: np.ndarray
    phase: np.ndarray
    total_field_hz: np.ndarray
    local_field_hz: np.ndarray
    phase0: np.ndarray
    echo_times_s: tuple[float, ...]
    field_strength_t: float
    b0_dir: tuple[float, float, float]
    noise_sigma: float
    affine: np.ndarray


def dipole_fields(
    sources_ppm: Sequence[np.ndarray],
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 2.0,
) -> list[np.ndarray]:
    """Dipole fields (ppm) of several susceptibility maps sharing one padded kernel.

    Same as :func:`qsm_bids.core.kernels.dipole_convolve` applied to each map, but the
    k-space dipole kernel is built once for all of them.

    Parameters
    ----------
    sources_ppm : sequence of 3D arrays
        Susceptibility maps (ppm) of equal shape; they must be zero where the padding is
        meant to continue them (e.g. relative to air).
    voxel_size : 3 floats
        Voxel size (mm).
    b0_dir : 3 floats, default (0, 0, 1)
        B0 direction in voxel-index space.
    pad_factor : float, default 2.0
        Zero-pad each axis to this multiple of its size (reduces wrap-around).

    Returns
    -------
    list of float32 arrays
        The field shift (ppm) of each map, on the input grid.
    """
    shape = sources_ppm[0].shape
    target = kernels.fast_shape(
        [int(np.ceil(n * pad_factor)) for n in shape], complex_radices=False
    )
    d = kernels.dipole_kernel(target, voxel_size, b0_dir, real=True)
    out = []
    for chi in sources_ppm:
        padded, sl = kernels.pad_to(np.asarray(chi, dtype=np.float32), target)
        spec = kernels.rfftn(padded)
        del padded
        spec *= d
        out.append(kernels.irfftn(spec, s=target)[sl].astype(np.float32))
        del spec
    return out


def smooth_phase_offset(
    shape: Sequence[int], rng: np.random.Generator, *, peak_to_peak_rad: float = 2.5
) -> np.ndarray:
    """Random smooth phase offset (rad): a 2nd-order polynomial plus a Gaussian bump.

    Mimics the transmit/receive phase of a coil combination (MCPC-3D-S removes such a
    term). Returns float32 of ``shape`` with range ``peak_to_peak_rad``.
    """
    axes = [np.linspace(-1.0, 1.0, int(n), dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    c = rng.normal(0.0, 1.0, 10).astype(np.float32)
    p = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * x + c[4] * y * y + c[5] * z * z)
    p = p + 0.5 * (c[6] * x * y + c[7] * y * z + c[8] * x * z)
    ctr = rng.uniform(-0.4, 0.4, 3).astype(np.float32)
    bump = np.exp(-((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2) / 0.18)
    p = p + 1.5 * np.sign(c[9]) * bump
    p = p - p.min()
    return (p * (peak_to_peak_rad / max(float(p.max()), 1e-12))).astype(np.float32)


def simulate_acquisition(
    phantom: HeadPhantom,
    *,
    echo_times_s: tuple[float, ...] = (0.004, 0.012, 0.020, 0.028),
    field_strength_t: float | None = None,
    b0_dir: tuple[float, float, float] | None = None,
    snr: float = 100.0,
    phase_offset: bool = True,
    rng: np.random.Generator | int | None = None,
) -> Acquisition:
    """Simulate a monopolar multi-echo GRE acquisition of a phantom.

    Forward model of the QSM challenge 2.0 / qsm-forward simulation (Marques et al., MRM
    2021): total field = D * (chi - chi_air) on a 2x zero-padded grid; local field = D * (chi
    inside the brain mask); ``S_n = m0 exp(-R2* TE_n) exp(i (phase0 + 2 pi f TE_n)) + noise``.

    Parameters
    ----------
    phantom : HeadPhantom
        Susceptibility (ppm rel. water), m0, R2* (1/s), masks and affine.
    echo_times_s : tuple of floats, default (0.004, 0.012, 0.020, 0.028)
        Echo times (s).
    field_strength_t : float or None, default None
        B0 (T); None uses ``phantom.field_strength_t`` (whose R2* values it matches).
    b0_dir : 3 floats or None, default None
        B0 direction in voxel-index space; None derives it from the phantom's affine with
        :func:`qsm_bids.core.kernels.b0_direction` (oblique grids).
    snr : float, default 100.0
        Mean brain m0 over the noise standard deviation per channel; ``inf`` or <= 0 gives
        noise-free data.
    phase_offset : bool, default True
        Add a smooth random phase offset ``phase0`` (about 2.5 rad peak to peak).
    rng : numpy Generator, int or None, default None
        Random generator or seed (noise and phase offset).

    Returns
    -------
    Acquisition
        Magnitude, wrapped phase (rad, [-pi, pi)), total and local field (Hz), phase0 (rad).
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    b0 = phantom.field_strength_t if field_strength_t is None else float(field_strength_t)
    if b0_dir is None:
        bdir = kernels.b0_direction(phantom.affine)
    else:
        bdir = np.asarray(b0_dir, dtype=np.float64)
        bdir = bdir / np.linalg.norm(bdir)
    shape = phantom.chi.shape

    # (1) fields in ppm: total (relative to air, so air/padding is source-free) and local.
    chi = np.asarray(phantom.chi, dtype=np.float32)
    tissue = phantom.tissue_mask if phantom.tissue_mask is not None else phantom.brain_mask
    total_ppm, local_ppm = dipole_fields(
        [chi - np.float32(CHI_AIR_PPM), np.where(tissue, chi, np.float32(0.0))],
        phantom.voxel_size,
        bdir,
        pad_factor=2.0,
    )
    # (2) ppm -> Hz.
    total_hz = np.asarray(ppm_to_hz(total_ppm, b0), dtype=np.float32)
    local_hz = np.asarray(ppm_to_hz(local_ppm, b0), dtype=np.float32)
    del total_ppm, local_ppm

    # (3) multi-echo signal.
    phase0 = smooth_phase_offset(shape, gen) if phase_offset else np.zeros(shape, dtype=np.float32)
    m0 = np.asarray(phantom.m0, dtype=np.float32)
    r2 = np.asarray(phantom.r2star, dtype=np.float32)
    brain = np.asarray(phantom.brain_mask, dtype=bool)
    noisy = np.isfinite(snr) and snr > 0
    sigma = float(m0[brain].mean() / snr) if noisy and brain.any() else 0.0
    n_echo = len(echo_times_s)
    mag = np.empty((*shape, n_echo), dtype=np.float32)
    pha = np.empty((*shape, n_echo), dtype=np.float32)
    for n, te in enumerate(echo_times_s):
        te32 = np.float32(te)
        amp = m0 * np.exp(-r2 * te32)
        ang = phase0 + np.float32(2.0 * np.pi) * total_hz * te32
        re = amp * np.cos(ang)
        im = amp * np.sin(ang)
        if noisy:
            re += gen.normal(0.0, sigma, shape).astype(np.float32)
            im += gen.normal(0.0, sigma, shape).astype(np.float32)
        mag[..., n] = np.hypot(re, im)
        pha[..., n] = wrap_to_pi(np.arctan2(im, re))
    return Acquisition(
        magnitude=mag,
        phase=pha,
        total_field_hz=total_hz,
        local_field_hz=local_hz,
        phase0=phase0,
        echo_times_s=tuple(float(t) for t in echo_times_s),
        field_strength_t=b0,
        b0_dir=tuple(float(v) for v in bdir),  # type: ignore[arg-type]
        noise_sigma=sigma,
        affine=np.asarray(phantom.affine, dtype=np.float64).copy(),
    )
