"""Exact quality-guided region-growing phase unwrapping in the spirit of ROMEO.

Follows Dymerska B, Eckstein K, Bachrata B, et al. "Phase unwrapping with a rapid opensource
minimum spanning tree algorithm (ROMEO)". Magn Reson Med 2021;85:2294-2308:

1. Every pair of face-neighbouring voxels (an *edge*) gets a reliability weight in [0, 1] that
   is the product of a phase coherence, a phase linearity (the wrapped gradient changes little
   along the line through the edge), an optional magnitude coherence and, for multi-echo data,
   an optional gradient coherence between the first two echoes.
2. Weights are quantised into 255 levels (``uint8``; 0 means "no edge").
3. Starting from a high-quality seed voxel, the unwrapped region grows along the most reliable
   edge first, using a bucket priority queue (one LIFO stack per weight level), which makes the
   growth O(number of voxels), i.e. a maximum spanning tree built greedily (Prim's algorithm).
4. Each newly reached voxel ``t`` is unwrapped relative to its already unwrapped neighbour
   ``s``: ``out[t] = phase[t] + 2*pi*round((pred - phase[t]) / (2*pi))`` with ``pred =
   out[s]``, or, where the unwrapped phase along the edge's line is steep, the linear
   extrapolation ``pred = 2 out[s] - out[s - e]`` (our addition: a second-order prediction
   that keeps true neighbour steps beyond pi right, as found next to air cavities at 7 T).

The result is *exactly* congruent with the wrapped input (``out - phase`` is a multiple of
``2*pi`` to float32 precision); each connected component of the mask carries its own global
``2*pi*k`` (its seed keeps its wrapped value). Voxels outside the mask are returned unchanged
(wrapped).
"""

from __future__ import annotations

import numba
import numpy as np

TWO_PI = 2.0 * np.pi
N_LEVELS = 255  # quantisation levels of the edge weights (uint8 1..255; 0 = no edge)
#: unwrapped steps (rad) along a line between which growth predicts by linear extrapolation
SLOPE_THRESHOLD = 0.5 * np.pi
SLOPE_MAX = 1.5 * np.pi


# --------------------------------------------------------------------------------------
# Step 1-2: edge weights
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _wrap(x: float) -> float:
    return x - TWO_PI * np.floor((x + np.pi) / TWO_PI)


@numba.njit(cache=True, nogil=True)
def _second_difference(phase, mask, x, y, z, dx, dy, dz, d1):
    """Largest wrapped change of the wrapped gradient ``d1`` of the edge from (x, y, z) to
    (x+dx, y+dy, z+dz) relative to the collinear edges on either side (0 where absent)."""
    nx, ny, nz = phase.shape
    worst = 0.0
    xa, ya, za = x - dx, y - dy, z - dz
    if xa >= 0 and ya >= 0 and za >= 0 and mask[xa, ya, za]:
        dprev = _wrap(float(phase[x, y, z]) - float(phase[xa, ya, za]))
        c = abs(_wrap(d1 - dprev))
        if c > worst:
            worst = c
    xb, yb, zb = x + 2 * dx, y + 2 * dy, z + 2 * dz
    if xb < nx and yb < ny and zb < nz and mask[xb, yb, zb]:
        dnext = _wrap(float(phase[xb, yb, zb]) - float(phase[x + dx, y + dy, z + dz]))
        c = abs(_wrap(dnext - d1))
        if c > worst:
            worst = c
    return worst


@numba.njit(cache=True, nogil=True)
def _edge_weights_kernel(phase, mask, magnitude, use_mag, phase2, use_grad, te_ratio, use_lin):
    nx, ny, nz = phase.shape
    w = np.zeros((3, nx, ny, nz), dtype=np.uint8)
    inv_pi = 1.0 / np.pi
    te_scale = 1.0 / te_ratio if use_grad else 1.0
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                for d in range(3):
                    dx = 1 if d == 0 else 0
                    dy = 1 if d == 1 else 0
                    dz = 1 if d == 2 else 0
                    x2, y2, z2 = x + dx, y + dy, z + dz
                    if x2 >= nx or y2 >= ny or z2 >= nz:
                        continue
                    if not mask[x2, y2, z2]:
                        continue
                    # (a) phase coherence: 1 - |wrapped difference| / pi
                    d1 = _wrap(float(phase[x2, y2, z2]) - float(phase[x, y, z]))
                    q = 1.0 - abs(d1) * inv_pi
                    if use_grad:
                        # (b) gradient coherence: echo-2 difference vs. the echo-1 difference
                        # scaled by TE2/TE1, compared modulo 2*pi (so that a wrapped echo-2
                        # difference of a steep but consistent gradient is not penalised)
                        d2 = _wrap(float(phase2[x2, y2, z2]) - float(phase2[x, y, z]))
                        q *= 1.0 - abs(_wrap(d2 - d1 * te_scale)) * inv_pi
                    if use_lin:
                        # (c) phase linearity: the gradient changes little along the line
                        q *= 1.0 - _second_difference(phase, mask, x, y, z, dx, dy, dz, d1) * inv_pi
                    if use_mag:
                        # (d) magnitude coherence: min / max of the two magnitudes
                        a = float(magnitude[x, y, z])
                        b = float(magnitude[x2, y2, z2])
                        lo = a if a < b else b
                        hi = a if a > b else b
                        q *= lo / hi if hi > 0.0 else 0.0
                    # quantise to 1..255 (every edge inside the mask stays usable)
                    level = 1 + int(q * (N_LEVELS - 1) + 0.5)
                    if level > N_LEVELS:
                        level = N_LEVELS
                    if level < 1:
                        level = 1
                    w[d, x, y, z] = level
    return w


def edge_weights(
    phase: np.ndarray,
    mask: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    phase2: np.ndarray | None = None,
    echo_time_ratio: float = 0.5,
    *,
    linearity: bool = True,
) -> np.ndarray:
    """Quantised ROMEO-style reliability weights of the edges between neighbouring voxels.

    The weight of an edge is the product of coherences in [0, 1] (Dymerska et al. 2021,
    section 2.1): phase coherence ``1 - |dphi| / pi``; with ``phase2``, a gradient coherence
    between the echoes; with ``linearity``, a phase-linearity term (the wrapped gradient
    changes little along the line through the edge); with ``magnitude``, the magnitude
    coherence ``min / max``.

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase (rad) of the volume to unwrap (for multi-echo data: echo 1).
    mask : (X, Y, Z) bool array or None, default None
        Edges with an end outside the mask get weight 0 (no edge). None: the whole grid.
    magnitude : (X, Y, Z) array or None, default None
        Magnitude (any unit); adds the coherence ``min(m_a, m_b) / max(m_a, m_b)``.
    phase2 : (X, Y, Z) array or None, default None
        Wrapped phase (rad) of echo 2; adds the gradient coherence
        ``1 - |wrap(dphi2 - dphi1 * TE2/TE1)| / pi`` (differences in rad). The comparison
        is made modulo 2*pi, so that a steep gradient that wraps in echo 2 but is consistent
        with echo 1 keeps its weight (the plain ``1 - |dphi1 - dphi2 * TE1/TE2|`` saturates
        at 0 wherever echo 2 wraps between neighbours, i.e. exactly where reliable ordering
        matters most).
    echo_time_ratio : float, default 0.5
        ``TE1 / TE2`` (only used with ``phase2``).
    linearity : bool, default True
        Multiply by ``1 - c / pi`` with ``c`` the larger wrapped change of the gradient
        (``|wrap(dphi - dphi_prev)|``, ``|wrap(dphi_next - dphi)|``) against the collinear
        edges on either side that lie in the mask (ROMEO's phase linearity). Edges where an
        aliased, steep gradient meets an unaliased one get low weights.

    Returns
    -------
    (3, X, Y, Z) uint8 array
        ``w[d, i, j, k]`` is the weight of the edge from voxel ``(i, j, k)`` to its neighbour
        one step further along axis ``d``: 1 (least reliable) to 255 (most reliable), 0 for
        no edge (outside the mask or beyond the grid). The product ``q`` of the coherences
        is mapped to ``1 + round(254 * q)``.
    """
    p = np.ascontiguousarray(phase, dtype=np.float32)
    m = np.ones(p.shape, bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if m.shape != p.shape:
        raise ValueError(f"mask shape {m.shape} != phase shape {p.shape}")
    use_mag = magnitude is not None
    mag = np.ascontiguousarray(magnitude if use_mag else np.zeros((1, 1, 1)), dtype=np.float32)
    use_grad = phase2 is not None
    p2 = np.ascontiguousarray(phase2 if use_grad else np.zeros((1, 1, 1)), dtype=np.float32)
    for name, arr, used in (("magnitude", mag, use_mag), ("phase2", p2, use_grad)):
        if used and arr.shape != p.shape:
            raise ValueError(f"{name} shape {arr.shape} != phase shape {p.shape}")
    if use_grad and not echo_time_ratio > 0:
        raise ValueError(f"echo_time_ratio must be > 0, got {echo_time_ratio}")
    return _edge_weights_kernel(
        p, m, mag, use_mag, p2, use_grad, float(echo_time_ratio), bool(linearity)
    )


# --------------------------------------------------------------------------------------
# Step 3-4: region growing with a bucket priority queue
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _push_edges(v, wflat, n, strides, visited, buf, start, fill):
    """Push the edges from freshly unwrapped voxel ``v`` to its unvisited neighbours.

    An entry is ``target * 8 + code``: code d (0..2) means the source is ``target - s_d``,
    code 3 + d means the source is ``target + s_d``. Returns the highest level pushed.
    """
    top = 0
    for d in range(3):
        s = strides[d]
        # forward edge v -> v + s (weight stored at v)
        lev = wflat[d * n + v]
        if lev > 0:
            t = v + s
            if not visited[t]:
                buf[fill[lev]] = t * 8 + d
                fill[lev] += 1
                if lev > top:
                    top = lev
        # backward edge v -> v - s (weight stored at v - s)
        t = v - s
        if t >= 0:
            lev = wflat[d * n + t]
            if lev > 0 and not visited[t]:
                buf[fill[lev]] = t * 8 + 3 + d
                fill[lev] += 1
                if lev > top:
                    top = lev
    return top


@numba.njit(cache=True, nogil=True)
def _grow(phase, wflat, mask, strides, dims, slope_threshold, slope_max):
    n = phase.size
    two_pi = np.float32(TWO_PI)
    inv_two_pi = 1.0 / TWO_PI
    out = phase.copy()
    visited = np.zeros(n, dtype=np.bool_)

    # bucket layout: an edge is pushed at most once (by whichever end is reached first),
    # so bucket `lev` needs room for the number of edges of that level.
    counts = np.zeros(N_LEVELS + 2, dtype=np.int64)
    for i in range(wflat.size):
        counts[wflat[i]] += 1
    start = np.zeros(N_LEVELS + 2, dtype=np.int64)
    total = 0
    for lev in range(1, N_LEVELS + 1):
        start[lev] = total
        total += counts[lev]
    fill = start.copy()
    buf = np.empty(max(total, 1), dtype=np.int64)

    # seed order: voxel quality = sum of its edge levels; counting sort, best first
    quality = np.zeros(n, dtype=np.int32)
    for d in range(3):
        s = strides[d]
        for v in range(n):
            lev = wflat[d * n + v]
            if lev > 0:
                quality[v] += lev
                quality[v + s] += lev
    qmax = 6 * N_LEVELS
    qcount = np.zeros(qmax + 2, dtype=np.int64)
    n_mask = 0
    for v in range(n):
        if mask[v]:
            qcount[qmax - quality[v]] += 1
            n_mask += 1
    qstart = np.zeros(qmax + 2, dtype=np.int64)
    acc = 0
    for q in range(qmax + 1):
        qstart[q] = acc
        acc += qcount[q]
    order = np.empty(n_mask, dtype=np.int64)
    for v in range(n):
        if mask[v]:
            b = qmax - quality[v]
            order[qstart[b]] = v
            qstart[b] += 1

    n_seeds = 0
    for oi in range(n_mask):
        seed = order[oi]
        if visited[seed]:
            continue
        # a new connected component: its seed keeps its wrapped value
        n_seeds += 1
        visited[seed] = True
        top = _push_edges(seed, wflat, n, strides, visited, buf, start, fill)
        while top > 0:
            if fill[top] == start[top]:
                top -= 1
                continue
            fill[top] -= 1
            e = buf[fill[top]]
            t = e >> 3
            if visited[t]:
                continue
            code = e & 7
            if code < 3:
                src = t - strides[code]
            else:
                src = t + strides[code - 3]
            # step 4: unwrap relative to the already unwrapped neighbour; where the phase
            # along the edge's line is steep (the neighbour behind ``src`` is unwrapped and
            # differs by more than ``slope_threshold``), predict by linear extrapolation,
            # which stays right for steps beyond pi as long as the gradient changes slowly
            pred = out[src]
            dd = code if code < 3 else code - 3
            sd = strides[dd]
            pos = (src // sd) % dims[dd]
            if code < 3:
                beh = src - sd
                ok = pos >= 1
            else:
                beh = src + sd
                ok = pos <= dims[dd] - 2
            if ok and visited[beh] and mask[beh]:
                slope = out[src] - out[beh]
                if slope_threshold < abs(slope) < slope_max:
                    pred = out[src] + slope
            k = np.floor((pred - phase[t]) * inv_two_pi + 0.5)
            out[t] = phase[t] + two_pi * np.float32(k)
            visited[t] = True
            hi = _push_edges(t, wflat, n, strides, visited, buf, start, fill)
            if hi > top:
                top = hi
    return out, n_seeds


def region_growing_unwrap_3d(
    phase: np.ndarray,
    mask: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    extrapolate: bool = True,
) -> np.ndarray:
    """Exact quality-guided region-growing unwrapping of one 3D phase volume (ROMEO-like).

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase (rad).
    mask : (X, Y, Z) bool array or None, default None
        Voxels to unwrap; None unwraps the whole grid. Each connected component
        (6-connectivity) is grown from its own best seed.
    magnitude : (X, Y, Z) array or None, default None
        Magnitude for the magnitude coherence of the edge weights (ignored if ``weights``).
    weights : (3, X, Y, Z) array or None, default None
        Precomputed edge weights, e.g. from :func:`edge_weights` (uint8 levels 0..255, or
        floats in [0, 1] which are quantised to 1..255 where > 0). Edges touching voxels
        outside ``mask`` are ignored either way. None: :func:`edge_weights` of ``phase``
        (phase coherence, linearity and, if given, magnitude coherence).
    extrapolate : bool, default True
        Where the already unwrapped phase along the line of the growth edge is steep
        (``pi/2 < |u[s] - u[s - e]| < 3 pi/2`` rad for the source ``s`` and the voxel behind
        it; the upper bound stops an earlier error from running away), unwrap the new voxel
        against the linear extrapolation ``2 u[s] - u[s - e]`` instead of ``u[s]``. This
        keeps steep but smooth phase (true neighbour steps beyond pi, e.g. next to air
        cavities at 7 T) right; False: plain nearest-neighbour unwrapping.

    Returns
    -------
    (X, Y, Z) float32 array
        Unwrapped phase (rad): inside the mask ``out - phase`` is an exact multiple of
        ``2*pi`` (per connected component up to one global ``2*pi*k``; the seed keeps its
        wrapped value); outside the mask the wrapped input is returned unchanged.
    """
    p = np.ascontiguousarray(phase, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"phase must be 3D, got shape {p.shape}")
    m = np.ones(p.shape, bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if weights is None:
        w = edge_weights(p, m, magnitude)
    else:
        w = np.asarray(weights)
        if w.shape != (3, *p.shape):
            raise ValueError(f"weights shape {w.shape} != {(3, *p.shape)}")
        if w.dtype != np.uint8:
            wf = np.clip(np.nan_to_num(w.astype(np.float32)), 0.0, 1.0)
            w = np.where(wf > 0, 1 + np.rint(wf * (N_LEVELS - 1)), 0).astype(np.uint8)
        w = w.copy()
        # drop edges with an end outside the mask and beyond the grid faces
        w[0, :-1] &= np.where(m[:-1] & m[1:], 255, 0).astype(np.uint8)
        w[1, :, :-1] &= np.where(m[:, :-1] & m[:, 1:], 255, 0).astype(np.uint8)
        w[2, :, :, :-1] &= np.where(m[:, :, :-1] & m[:, :, 1:], 255, 0).astype(np.uint8)
        w[0, -1] = 0
        w[1, :, -1] = 0
        w[2, :, :, -1] = 0
    nx, ny, nz = p.shape
    strides = np.array([ny * nz, nz, 1], dtype=np.int64)
    dims = np.array([nx, ny, nz], dtype=np.int64)
    thr = SLOPE_THRESHOLD if extrapolate else np.inf
    out, _ = _grow(
        p.ravel(),
        np.ascontiguousarray(w).ravel(),
        m.ravel(),
        strides,
        dims,
        float(thr),
        float(SLOPE_MAX),
    )
    return out.reshape(p.shape)
