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
