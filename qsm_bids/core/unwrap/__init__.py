"""Phase unwrapping stage: one stage function per algorithm.

Every stage function has the signature
``f(phase, magnitude, mask, echo_times, voxel_size, *, <keyword-only tunables>) -> ndarray``
with ``phase`` (X, Y, Z, E) wrapped radians, ``magnitude`` (X, Y, Z, E) or None, ``mask`` bool
(X, Y, Z), ``echo_times`` in s (increasing) and ``voxel_size`` in mm; it returns (X, Y, Z, E)
float32 unwrapped phase (rad), consistent in space and across echoes (echo n follows
``phase0 + 2*pi*f*TE_n``); outside the mask the wrapped input is returned.

* :func:`unwrap_region_growing` -- exact, ROMEO-like quality-guided region growing
  (Dymerska et al., MRM 2021); the recommended default.
* :func:`unwrap_laplacian` -- Laplacian / least-squares unwrapping (Schofield & Zhu, Opt Lett
  2003), by default snapped onto the wrapped data so that it is congruent too.

The multi-echo strategy (echo 1 and the echo difference spatially, the steeper of the two
re-derived from the other and a robust smooth phase offset, later echoes temporally) is in
:mod:`qsm_bids.core.unwrap.temporal`.
"""

from __future__ import annotations

import numpy as np

from qsm_bids.core.phase import wrap_to_pi
from qsm_bids.core.unwrap.laplacian import laplacian_unwrap_3d, make_congruent
from qsm_bids.core.unwrap.region_growing import edge_weights, region_growing_unwrap_3d
from qsm_bids.core.unwrap.temporal import (
    robust_smooth_phase,
    temporal_unwrap,
    unwrap_multi_echo,
    weighted_linear_fit,
)

__all__ = [
    "edge_weights",
    "laplacian_unwrap_3d",
    "make_congruent",
    "region_growing_unwrap_3d",
    "robust_smooth_phase",
    "temporal_unwrap",
    "unwrap_laplacian",
    "unwrap_multi_echo",
    "unwrap_region_growing",
    "weighted_linear_fit",
    "wrap_to_pi",
]


def unwrap_region_growing(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: tuple[float, ...],
    voxel_size: tuple[float, float, float],
    *,
    magnitude_weights: bool = True,
    gradient_weights: bool = True,
    linearity_weights: bool = True,
    extrapolate: bool = True,
    echo_strategy: str = "template",
    center_frequency: bool = True,
) -> np.ndarray:
    """Exact quality-guided region-growing unwrapping of (multi-echo) phase (ROMEO-like).

    Follows Dymerska et al., "Phase unwrapping with a rapid opensource minimum spanning tree
    algorithm (ROMEO)", MRM 2021;85:2294-2308: edge weights from phase coherence, phase
    linearity, magnitude coherence and echo-1/echo-2 gradient coherence, quantised to 255
    levels, and growth along the most reliable edge first with a bucket queue; where the
    phase is steep along the growth direction, new voxels are unwrapped against a linear
    extrapolation (see :func:`region_growing_unwrap_3d`). Multi-echo data: echo 1 and the
    echo-difference phase are unwrapped spatially; the steeper of the two is then re-derived
    voxel-wise from the other and a robust smooth phase offset (ROMEO's template idea), and
    later echoes are unwrapped temporally against the linear prediction
    ``phase0 + 2*pi*f*TE`` (see :func:`unwrap_multi_echo`).

    Parameters
    ----------
    phase : (X, Y, Z, E) array
        Wrapped phase (rad).
    magnitude : (X, Y, Z, E) array or None
        Magnitude (any unit); None for phase-only data.
    mask : (X, Y, Z) bool array
        Voxels to unwrap; each 6-connected component is grown from its own seed.
    echo_times : E floats
        Echo times (s), increasing.
    voxel_size : 3 floats
        Voxel size (mm); sets the smoothing of the phase offset (5 mm sigma).
    magnitude_weights : bool, default True
        Include the magnitude coherence ``min/max`` in the edge weights (if magnitude given).
    gradient_weights : bool, default True
        Include the echo-1/echo-2 gradient coherence (compared modulo 2*pi) in the edge
        weights of echo 1 (E >= 2).
    linearity_weights : bool, default True
        Include the phase linearity (small wrapped change of the gradient along a line) in
        the edge weights.
    extrapolate : bool, default True
        Unwrap against the linear extrapolation along the growth direction where the
        unwrapped phase there changes by more than pi/2 (and less than 3 pi/2) per voxel.
    echo_strategy : str, default "template"
        "template" (echo 1 or the echo difference, whichever has the shorter time, is the
        template from which the other is re-derived voxel-wise; echoes >= 3 voxel-wise
        against the prediction), "temporal" (echo 1 and the echo difference both kept as
        unwrapped spatially; the behaviour before "template" existed) or "individual"
        (every echo unwrapped spatially, its global 2*pi*k per component set from the
        prediction).
    center_frequency : bool, default True
        Resolve the global 2*pi*k of the echo-difference phase by putting the mean frequency
        of each mask component within half a cycle (over TE_2 - TE_1) of 0 Hz.

    Returns
    -------
    (X, Y, Z, E) float32 array
        Unwrapped phase (rad); inside the mask exactly ``phase + 2*pi*k`` (k integer),
        outside the mask the wrapped input.
    """

    def spatial(
        wrapped: np.ndarray, mag: np.ndarray | None, second: np.ndarray | None, ratio: float
    ) -> np.ndarray:
        w = edge_weights(
            wrapped,
            mask,
            mag if magnitude_weights else None,
            second if gradient_weights else None,
            ratio,
            linearity=linearity_weights,
        )
        return region_growing_unwrap_3d(wrapped, mask, weights=w, extrapolate=extrapolate)

    return unwrap_multi_echo(
        phase,
        magnitude,
        mask,
        echo_times,
        spatial,
        echo_strategy=echo_strategy,
        center_frequency=center_frequency,
        voxel_size=_voxel_size(voxel_size),
    )


def _voxel_size(voxel_size: tuple[float, float, float]) -> tuple[float, float, float]:
    v = tuple(float(x) for x in np.ravel(voxel_size))
    if len(v) != 3 or not all(x > 0 for x in v):
        raise ValueError(f"voxel_size must be 3 positive floats (mm), got {voxel_size!r}")
    return v  # type: ignore[return-value]


def unwrap_laplacian(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    echo_times: tuple[float, ...],
    voxel_size: tuple[float, float, float],
    *,
    congruent: bool = True,
    use_mask: bool = True,
    max_iter: int = 100,
    tol: float = 1e-4,
    echo_strategy: str = "template",
    center_frequency: bool = True,
) -> np.ndarray:
    """Laplacian (least-squares) unwrapping of (multi-echo) phase (Schofield & Zhu 2003).

    Follows Schofield MA, Zhu Y, Opt Lett 2003;28:1194-1196, with the Laplacian formed from
    wrapped neighbour differences and mirror boundaries (exact for consistent data), and with
    a mask the weighted least-squares form of Ghiglia & Romero (JOSA A 1994) solved by
    DCT-preconditioned conjugate gradients (see :func:`laplacian_unwrap_3d`). Multi-echo data
    are handled as in :func:`unwrap_region_growing` (echo 1 and the echo difference spatially,
    later echoes temporally), never by unwrapping each echo on its own, which would break the
    linearity of phase over TE.

    Parameters
    ----------
    phase : (X, Y, Z, E) array
        Wrapped phase (rad).
    magnitude : (X, Y, Z, E) array or None
        Magnitude; only used for the fit weights ``magnitude^2``. None for phase-only data.
    mask : (X, Y, Z) bool array
        Voxels to unwrap; outside, the wrapped input is returned.
    echo_times : E floats
        Echo times (s), increasing.
    voxel_size : 3 floats
        Voxel size (mm).
    congruent : bool, default True
        Snap each smooth Laplacian estimate onto the wrapped data
        (``phase + 2*pi*round((estimate - phase) / (2*pi))``, :func:`make_congruent`) and
        unwrap later echoes temporally. This keeps the measured phase (noise and fine
        structure the least-squares solution smooths away), and is exact wherever the
        estimate is within pi of the truth; it is the more accurate choice on simulated data.
        False: return the smooth estimates (echo n = ``u_1 + D (TE_n - TE_1)/(TE_2 - TE_1)``).
    use_mask : bool, default True
        Use only phase differences inside the mask (weighted least squares, conjugate
        gradients); False: one direct solve over the whole grid, which lets the noise outside
        the object bias the result.
    max_iter : int, default 100
        Maximum conjugate-gradient iterations per spatial unwrap.
    tol : float, default 1e-4
        Relative residual at which conjugate gradients stop.
    echo_strategy : str, default "template"
        As in :func:`unwrap_region_growing` (with ``congruent=False``, "template" and
        "temporal" coincide).
    center_frequency : bool, default True
        As in :func:`unwrap_region_growing`.

    Returns
    -------
    (X, Y, Z, E) float32 array
        Unwrapped phase (rad); with ``congruent=True`` inside the mask ``phase + 2*pi*k``.
    """
    m = np.asarray(mask, dtype=bool)

    def spatial(
        wrapped: np.ndarray, mag: np.ndarray | None, second: np.ndarray | None, ratio: float
    ) -> np.ndarray:
        del mag, second, ratio  # the least-squares solution is unweighted
        est = laplacian_unwrap_3d(
            wrapped, voxel_size, mask=m if use_mask else None, max_iter=max_iter, tol=tol
        )
        if congruent:
            return make_congruent(wrapped, est, m)
        return est

    return unwrap_multi_echo(
        phase,
        magnitude,
        m,
        echo_times,
        spatial,
        echo_strategy=echo_strategy,
        center_frequency=center_frequency,
        congruent=congruent,
        voxel_size=_voxel_size(voxel_size),
    )
