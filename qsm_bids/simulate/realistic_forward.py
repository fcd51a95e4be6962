"""Forward model of the realistic phantom: fine-grid field and signal, k-space truncation.

Unlike :func:`qsm_bids.simulate.forward.simulate_acquisition` (field on the acquisition
grid from the acquisition grid's own chi: the inverse crime), every physical step happens
on the fine grid of a :class:`~qsm_bids.simulate.realistic.FineSubject` and only the
acquired complex signal is brought to the acquisition grid, as a scanner does (the QSM
challenge 2.0 simulation, Marques et al., MRM 2021):

1. field shift (ppm) = continuous-k dipole kernel ``D(k) = 1/3 - (k.b)^2/|k|^2``
   (``D(0) = 0``, the project's convention: :func:`qsm_bids.core.kernels.dipole_kernel`)
   applied to ``chi - chi_air`` on the fine grid zero-padded to ``pad_factor`` times its
   size (2, as the ideal simulator, while the padded grid stays under
   :data:`MAX_PADDED_VOXELS`, else 1.5: a 1 mm acquisition); air and the padding are then
   source-free, so the padding makes no field (QSM_REFERENCE.md: air = +9.4 ppm relative
   to water). The periodic images of the head, 1.5-2 padded widths away, add a smooth
   harmonic field of a few Hz at 3 T (background, which background removal takes away);
2. plus the white-matter microstructure offset ``-a (sin^2 theta - 2/3)`` (a few ppb;
   :func:`~qsm_bids.simulate.structure.microstructure_offset_ppm`), which no scalar
   susceptibility explains;
3. ppm -> Hz: ``f = ppm * gamma_bar * B0 * 1e-6``;
4. per echo, on the fine grid,
   ``S = B * M0 * exp(-R2* TE) * exp(i (phase0 + 2 pi f TE))`` with a smooth receive-coil
   bias ``B`` (magnitude, +-``bias``) and a smooth phase offset ``phase0`` (2.5 rad peak to
   peak), then :func:`~qsm_bids.simulate.resample.kspace_truncate` to the acquisition
   grid: intra-voxel dephasing, partial volume and Gibbs ringing are real;
5. complex Gaussian noise of ``sigma = mean |S_1| in white matter / snr`` (first echo).

Truths on the acquisition grid (:func:`~qsm_bids.simulate.resample.block_average`):
total and local field (Hz, the microstructure offset included, since it is part of the
field the phase sees; the local field is the field of the brain's own sources), phase0.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core import kernels
from qsm_bids.core.phase import wrap_to_pi
from qsm_bids.core.physics import CHI_AIR_PPM, ppm_to_hz
from qsm_bids.simulate.forward import Acquisition, dipole_fields, smooth_phase_offset
from qsm_bids.simulate.phantom import WM, _smooth_random_field
from qsm_bids.simulate.realistic import FineSubject
from qsm_bids.simulate.resample import block_average, kspace_truncate, upsample_linear
from qsm_bids.simulate.structure import microstructure_offset_ppm

#: Largest padded fine grid (voxels) of the dipole convolution at 2x padding; larger grids
#: are padded 1.5x (about 4 GB of FFT buffers for a 1 mm acquisition instead of 8).
MAX_PADDED_VOXELS = 160_000_000


def default_pad_factor(fine_shape: tuple[int, ...]) -> float:
    """Zero padding of the fine-grid dipole convolution: 2, or 1.5 for very large grids."""
    n = 1
    for m in kernels.fast_shape([2 * int(v) for v in fine_shape], complex_radices=False):
        n *= int(m)
    return 2.0 if n <= MAX_PADDED_VOXELS else 1.5


def fine_fields_ppm(
    fine: FineSubject, b0_dir: np.ndarray, *, pad_factor: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Total field, local field and microstructure offset (ppm) on the fine grid.

    Parameters
    ----------
    fine : FineSubject
        The fine-grid phantom.
    b0_dir : 3 floats
        Unit B0 direction in (fine = output) voxel-index space.
    pad_factor : float or None, default None
        Zero padding of the dipole convolution (times each axis); None:
        :func:`default_pad_factor`.

    Returns
    -------
    (total, local, micro) float32 fine-grid arrays
        ``total``: dipole field of ``chi - chi_air`` (all sources, air reference);
        ``local``: dipole field of the chi inside the brain mask only; ``micro``: the
        white-matter microstructure offset (zero outside the fibre voxels). The fields do
        not include ``micro``.
    """
    chi = fine.chi
    if pad_factor is None:
        pad_factor = default_pad_factor(fine.shape)
    total, local = dipole_fields(
        [chi - np.float32(CHI_AIR_PPM), np.where(fine.brain_mask, chi, np.float32(0.0))],
        fine.voxel_size,
        b0_dir,
        pad_factor=pad_factor,
    )
    micro = np.zeros(fine.shape, dtype=np.float32)
    a = float(fine.options.anisotropy_ppm)
    if a and fine.fibre_index.size:
        rot = np.asarray(fine.affine, dtype=np.float64)[:3, :3]
        rot = rot / np.linalg.norm(rot, axis=0, keepdims=True)
        b0_world = rot @ np.asarray(b0_dir, dtype=np.float64)
        micro.reshape(-1)[fine.fibre_index] = microstructure_offset_ppm(fine.fibres, b0_world, a)
    return total, local, micro


def simulate_realistic_acquisition(
    fine: FineSubject,
    *,
    echo_times_s: tuple[float, ...] = (0.004, 0.012, 0.020, 0.028),
    field_strength_t: float | None = None,
    b0_dir: tuple[float, float, float] | None = None,
    snr: float = 100.0,
    phase_offset: bool = True,
    bias: float = 0.25,
    pad_factor: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> Acquisition:
    """Simulate a monopolar multi-echo GRE acquisition of a fine-grid phantom.

    Parameters
    ----------
    fine : FineSubject
        From :func:`~qsm_bids.simulate.realistic.make_fine_subject`.
    echo_times_s : tuple of floats, default (0.004, 0.012, 0.020, 0.028)
        Echo times (s).
    field_strength_t : float or None, default None
        B0 (T); None: the subject's (whose R2* values it matches).
    b0_dir : 3 floats or None, default None
        B0 direction in voxel-index space; None: from the affine
        (:func:`qsm_bids.core.kernels.b0_direction`, oblique grids).
    snr : float, default 100.0
        Mean first-echo magnitude in white matter over the noise standard deviation per
        channel (typical 3 T values 40-100); ``inf`` or <= 0: no noise.
    phase_offset : bool, default True
        Add a smooth random phase offset (about 2.5 rad peak to peak).
    bias : float, default 0.25
        Largest relative deviation of the smooth receive-coil magnitude bias (0: none).
    pad_factor : float or None, default None
        Zero padding of the fine-grid dipole convolution (times each axis, >= 1.5); None:
        :func:`default_pad_factor` (2, or 1.5 for grids as large as a 1 mm head).
    rng : numpy Generator, int or None, default None
        Random generator or seed (phase offset, bias, noise).

    Returns
    -------
    Acquisition
        On the output grid: magnitude (same units as M0), wrapped phase (rad, [-pi, pi)),
        block-averaged total and local field truths (Hz, microstructure offset included)
        and phase0 (rad).
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    b0 = fine.field_strength_t if field_strength_t is None else float(field_strength_t)
    if b0_dir is None:
        bdir = kernels.b0_direction(fine.affine)
    else:
        bdir = np.asarray(b0_dir, dtype=np.float64)
        bdir = bdir / np.linalg.norm(bdir)
    f = fine.factor
    out_shape = fine.output.shape

    # (1-3) fields on the fine grid, in Hz; truths block-averaged on the output grid
    total, local, micro = fine_fields_ppm(fine, bdir, pad_factor=pad_factor)
    total += micro
    local += micro
    del micro
    hz = np.float32(ppm_to_hz(1.0, b0))
    local_hz = block_average(local, f) * hz
    del local
    total *= hz  # fine-grid field (Hz)
    total_hz = block_average(total, f)

    # (4) smooth phase offset and receive bias (output grid, interpolated to the fine one)
    if phase_offset:
        phase0 = smooth_phase_offset(out_shape, gen)
    else:
        phase0 = np.zeros(out_shape, dtype=np.float32)
    phase0_f = upsample_linear(phase0, f)
    coil = np.ones(out_shape, dtype=np.float32)
    if bias > 0:
        vox = float(np.mean(fine.output.voxel_size))
        coil += np.float32(bias) * _smooth_random_field(gen, out_shape, vox, 80.0)
    amp0 = upsample_linear(coil, f) * fine.m0
    wm = block_average(fine.labels == WM, f) >= 0.5

    noisy = np.isfinite(snr) and snr > 0
    sigma = 0.0
    n_echo = len(echo_times_s)
    mag = np.empty((*out_shape, n_echo), dtype=np.float32)
    pha = np.empty((*out_shape, n_echo), dtype=np.float32)
    two_pi = np.float32(2.0 * np.pi)
    for n, te in enumerate(echo_times_s):
        te32 = np.float32(te)
        sig = (amp0 * np.exp(-fine.r2star * te32)).astype(np.complex64)
        sig *= np.exp((phase0_f + two_pi * te32 * total) * np.complex64(1j))
        s = kspace_truncate(sig, out_shape)
        del sig
        if n == 0 and noisy:
            sigma = float(np.abs(s[wm]).mean() / snr) if wm.any() else 0.0
        if noisy and sigma > 0:
            s.real += gen.normal(0.0, sigma, out_shape).astype(np.float32)
            s.imag += gen.normal(0.0, sigma, out_shape).astype(np.float32)
        mag[..., n] = np.abs(s)
        pha[..., n] = wrap_to_pi(np.angle(s))
    return Acquisition(
        magnitude=mag,
        phase=pha,
        total_field_hz=total_hz.astype(np.float32, copy=False),
        local_field_hz=local_hz.astype(np.float32, copy=False),
        phase0=block_average(phase0_f, f),
        echo_times_s=tuple(float(t) for t in echo_times_s),
        field_strength_t=b0,
        b0_dir=tuple(float(v) for v in bdir),  # type: ignore[arg-type]
        noise_sigma=sigma,
        affine=np.asarray(fine.output.affine, dtype=np.float64).copy(),
    )
