"""Phase-quality measures computed from wrapped phase alone."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def phase_coherence(phase: np.ndarray, *, size: int = 3) -> np.ndarray:
    """Local phase coherence: ``|mean(exp(i*phase))|`` over a ``size``^3 neighbourhood.

    Close to 1 where the phase is smooth (tissue with signal), about ``1/size^1.5`` where it
    is noise (air, background). For 4D input (echoes last) the coherence of the first two
    echoes (highest SNR) is averaged. Used as a pseudo-magnitude for masking phase-only data.

    Parameters
    ----------
    phase : 3D or 4D array
        Wrapped phase (rad).
    size : int, default 3
        Neighbourhood edge length (voxels).

    Returns
    -------
    float32 array (X, Y, Z) in [0, 1].
    """
    p = np.asarray(phase, dtype=np.float32)
    if p.ndim == 3:
        p = p[..., None]
    acc = np.zeros(p.shape[:3], dtype=np.float32)
    n = min(2, p.shape[3])
    for e in range(n):
        re = ndimage.uniform_filter(np.cos(p[..., e]), size=size, mode="nearest")
        im = ndimage.uniform_filter(np.sin(p[..., e]), size=size, mode="nearest")
        acc += np.sqrt(re**2 + im**2)
    return (acc / n).astype(np.float32)


def inverse_noise_weights(
    noise: np.ndarray, mask: np.ndarray, *, floor_percentile: float = 10.0
) -> np.ndarray:
    """Data-fidelity weights ``1 / SD`` from a field noise map, mean 1 inside the mask.

    The inverse standard deviation is the weight of a least-squares data term whose noise
    varies over the image (e.g. the multi-echo fit's field SD, Liu T et al. MRM
    2013;69:467; MEDI's ``N_std``). The SD is floored at its ``floor_percentile``-th
    percentile inside the mask so that a few very bright voxels do not dominate the data
    term; voxels with a non-finite or non-positive SD get weight 0.

    Parameters
    ----------
    noise : (X, Y, Z) array
        Standard deviation of the field (any unit, e.g. Hz).
    mask : (X, Y, Z) array
        Voxels where the weights are needed; 0 outside.
    floor_percentile : float, default 10.0
        Percentile (0-100) of the SD inside the mask below which it is clipped.

    Returns
    -------
    (X, Y, Z) float32 array
        Weights >= 0 with mean 1 over the mask (all ones if the map carries no information).
    """
    sd = np.asarray(noise, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if sd.shape != m.shape:
        raise ValueError(f"noise map shape {sd.shape} differs from the mask's {m.shape}")
    good = m & np.isfinite(sd) & (sd > 0)
    if not np.any(good):
        return m.astype(np.float32)
    floor = np.float32(np.percentile(sd[good], floor_percentile))
    w = np.zeros(m.shape, np.float32)
    w[good] = 1.0 / np.maximum(sd[good], floor)
    w /= np.float32(w[m].mean())
    return w
