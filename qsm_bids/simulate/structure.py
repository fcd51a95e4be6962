"""Sub-voxel structure of the realistic head phantom: texture, folding, veins, iron, fibres.

Each function adds one feature that real brains have and piecewise-constant phantoms lack;
they work on the fine grid of :mod:`qsm_bids.simulate.realistic` (0.5 mm for a 1 mm
acquisition). Sizes and sources:

* **Smooth random fields** (:class:`SmoothField`): band-limited Gaussian noise of unit
  standard deviation and a chosen correlation length (mm), drawn on a coarse grid and
  interpolated linearly; used for the white-matter variation (a few ppb over ~25 mm), the
  grey-matter texture, the cortical folding pattern and the fibre orientations.
* **Cortical folding** (:func:`fold_cortex`): the MNI152 average brain's cortex is a smooth
  shell; here a band-limited field ``n`` with ~12 mm correlation moves the grey/white
  boundary out at gyral crowns (large ``|n|``) and in at sulci (small ``|n|``), and its
  zero level sets, thin sheets ~1 mm thick, become sulcal CSF through the grey matter.
* **Small veins** (:func:`vein_centrelines`, :func:`render_tubes`): tortuous tubes of
  radius 0.3-1 mm and chi 0.3-0.45 ppm (venous blood, deoxygenated), one third each
  running along B0 (< 20 deg), perpendicular to it (> 70 deg) and obliquely, drawn with a
  mass-conserving partial-volume profile so that sub-voxel veins keep their dipole moment.
* **Iron gradients** (:func:`iron_profile`): susceptibility (and R2*) of the deep grey
  nuclei rising along an anatomical direction or towards the nucleus centre by +-25-45 %
  (iron is not uniform in vivo: e.g. higher in the posterior putamen).
* **White-matter microstructure** (:func:`microstructure_offset_ppm`): an orientation
  dependent frequency offset ``-a (sin^2 theta - 2/3)`` ppm, ``theta`` the angle between the
  local fibre direction and B0 and ``a`` a few ppb (default 5 ppb, i.e. +3.3 ppb for fibres
  along B0 and -1.7 ppb for fibres across it). This is the sin^2 dependence of the hollow-cylinder /
  generalised Lorentzian models of myelinated axons (Wharton & Bowtell, PNAS 2012; Lee et
  al., PNAS 2010; Yablonskiy & Sukstanskii's generalised Lorentzian approach): a field that
  no scalar susceptibility explains. It is added to the field, never to the truth chi.
* **Calcifications** (:func:`sphere_occupancy`): optional small diamagnetic spheres.

Units: susceptibility in ppm, lengths in mm, angles in degrees unless stated otherwise.
The QSM challenge 2.0 phantom (Marques et al., MRM 2021) motivated the set of features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from qsm_bids.simulate.phantom import CSF, GM, WM
from qsm_bids.simulate.resample import resample_linear


class SmoothField:
    """Band-limited random field of unit standard deviation on a (fine) voxel grid.

    White noise on a coarse grid of spacing ``corr_mm / 2`` is smoothed by a Gaussian of one
    coarse voxel (periodic), normalised to zero mean and unit standard deviation and
    evaluated on the fine grid by linear interpolation, block by block (:meth:`block`), so
    that no fine-grid volume has to be held.

    Parameters
    ----------
    rng : numpy Generator
        Random generator (the field is drawn at construction).
    shape : 3 ints
        Fine grid shape (voxels).
    voxel_mm : float
        Fine voxel size (mm).
    corr_mm : float
        Correlation length (mm): the field varies over about this distance.
    """

    def __init__(
        self, rng: np.random.Generator, shape: Sequence[int], voxel_mm: float, corr_mm: float
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        step = max(float(corr_mm) / 2.0, float(voxel_mm))
        self._scale = float(voxel_mm) / step  # fine voxel -> coarse index
        coarse = tuple(int(np.ceil(n * self._scale)) + 3 for n in self.shape)
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="wrap")
        noise -= noise.mean()
        noise /= max(float(noise.std()), 1e-12)
        self._coarse = noise.astype(np.float32)

    def block(self, sl: tuple[slice, slice, slice]) -> np.ndarray:
        """The field on the fine-grid block ``sl`` (slices with unit step), float32."""
        pos = []
        for s, n in zip(sl, self.shape, strict=True):
            start, stop, _ = s.indices(n)
            pos.append(1.0 + np.arange(start, stop) * self._scale)
        return resample_linear(self._coarse, pos)

    def full(self) -> np.ndarray:
        """The field on the whole fine grid, float32."""
        return self.block(tuple(slice(0, n) for n in self.shape))  # type: ignore[arg-type]

    def at(self, ijk: np.ndarray) -> np.ndarray:
        """The field at fine voxel indices ``ijk`` (int array (3, N)), float32 (N,)."""
        pos = 1.0 + np.asarray(ijk, dtype=np.float64) * self._scale
        return ndimage.map_coordinates(self._coarse, pos, order=1, mode="nearest").astype(
            np.float32
        )


# --------------------------------------------------------------------------------------
# Cortical folding
# --------------------------------------------------------------------------------------


def fold_cortex(
    fractions: np.ndarray,
    noise: np.ndarray,
    *,
    amplitude: float = 0.35,
    sulcus_width: float = 0.12,
) -> np.ndarray:
    """Tissue classes of brain points with a gyral/sulcal pattern in the cortex.

    Parameters
    ----------
    fractions : float array (3, N)
        CSF, GM and WM fractions (sum 1) of the template at the points.
    noise : float array (N,)
        Band-limited unit-variance field at the points (:class:`SmoothField`, ~12 mm).
    amplitude : float, default 0.35
        Fraction shift of the grey/white boundary: ``wm += a (|n| - E|n|)`` and ``csf -=``
        the same, so that white matter reaches into gyral crowns (large ``|n|``) and
        retreats under sulci (small ``|n|``); 0 turns the folding off.
    sulcus_width : float, default 0.12
        Grey matter with ``|n|`` below this (a sheet about 1 mm thick around each zero level
        set of ``n``) and little white matter (WM fraction < 0.3) becomes sulcal CSF.

    Returns
    -------
    int16 array (N,)
        :data:`~qsm_bids.simulate.phantom.CSF`, ``GM`` or ``WM`` per point.
    """
    fr = np.asarray(fractions, dtype=np.float32)
    n = np.abs(np.asarray(noise, dtype=np.float32))
    shift = np.float32(amplitude) * (n - np.float32(np.sqrt(2.0 / np.pi)))
    moved = np.stack([fr[0] - shift, fr[1], fr[2] + shift])
    cls = np.array([CSF, GM, WM], dtype=np.int16)[np.argmax(moved, axis=0)]
    if amplitude > 0 and sulcus_width > 0:
        sulcus = (cls == GM) & (n < np.float32(sulcus_width)) & (fr[2] < 0.3)
        cls[sulcus] = CSF
    return cls


# --------------------------------------------------------------------------------------
# Veins
# --------------------------------------------------------------------------------------


@dataclass
class Vein:
    """A small vein: a tortuous tube.

    Attributes
    ----------
    points_mm : float64 (N, 3)
        Centre line (world mm), points ~0.25 mm apart.
    radius_mm : float
        Tube radius (mm).
    chi_ppm : float
        Susceptibility of its blood (ppm relative to water).
    category : str
        Intended orientation to B0: "parallel", "perpendicular" or "oblique".
    """

    points_mm: np.ndarray
    radius_mm: float
    chi_ppm: float
    category: str

    @property
    def length_mm(self) -> float:
        """Length of the centre line (mm)."""
        return float(np.linalg.norm(np.diff(self.points_mm, axis=0), axis=1).sum())

    def direction(self) -> np.ndarray:
        """Principal direction (unit vector, world) of the centre line's points."""
        p = self.points_mm - self.points_mm.mean(0)
        _, _, vt = np.linalg.svd(p, full_matrices=False)
        return vt[0]


#: Polar-angle ranges (degrees from B0) of the three vein orientation categories.
VEIN_CATEGORIES: dict[str, tuple[float, float]] = {
    "parallel": (0.0, 20.0),
    "perpendicular": (70.0, 90.0),
    "oblique": (30.0, 60.0),
}


def _direction(rng: np.random.Generator, b0: np.ndarray, theta_deg: tuple[float, float]):
    """Unit vector at a polar angle (to ``b0``) uniform on the sphere within the range."""
    c0, c1 = (np.cos(np.deg2rad(t)) for t in theta_deg)
    cos_t = rng.uniform(min(c0, c1), max(c0, c1))
    phi = rng.uniform(0.0, 2.0 * np.pi)
    helper = np.array([1.0, 0.0, 0.0]) if abs(b0[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(b0, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(b0, e1)
    sin_t = np.sqrt(max(0.0, 1.0 - cos_t**2))
    d = cos_t * b0 + sin_t * (np.cos(phi) * e1 + np.sin(phi) * e2)
    return d * (1.0 if rng.random() < 0.5 else -1.0)


def vein_centrelines(
    rng: np.random.Generator,
    inside: np.ndarray,
    affine: np.ndarray,
    starts: np.ndarray,
    count: int,
    *,
    b0_world: Sequence[float] = (0.0, 0.0, 1.0),
    radius_mm: tuple[float, float] = (0.3, 1.0),
    chi_ppm: tuple[float, float] = (0.30, 0.45),
    length_mm: tuple[float, float] = (10.0, 40.0),
    step_mm: float = 0.25,
    persistence_mm: float = 15.0,
    min_length_mm: float = 4.0,
) -> list[Vein]:
    """Random tortuous vein centre lines inside a mask, in every orientation to B0.

    Each vein starts at a random voxel of ``starts`` and grows both ways by a persistent
    random walk: at each step of ``step_mm`` the direction gets an isotropic random kick
    (an angular diffusion of ~15 deg over 10 mm) and relaxes back towards its initial
    direction over ``persistence_mm``, so that the vein meanders but keeps its overall
    orientation. The initial directions cycle through :data:`VEIN_CATEGORIES` (parallel,
    perpendicular, oblique to ``b0_world``). A vein stops where it leaves ``inside``.

    Parameters
    ----------
    rng : numpy Generator
        Random generator.
    inside : bool array (X, Y, Z)
        Where veins may run (e.g. the fine brain tissue mask).
    affine : (4, 4) array
        Voxel-to-world affine of ``inside`` (mm).
    starts : bool array (X, Y, Z)
        Candidate start voxels.
    count : int
        Number of veins to draw (those shorter than ``min_length_mm`` are dropped).
    b0_world : 3 floats, default (0, 0, 1)
        B0 direction in world coordinates.
    radius_mm, chi_ppm, length_mm : (min, max) floats
        Uniform ranges of radius (mm), blood susceptibility (ppm) and target length (mm).
    step_mm : float, default 0.25
        Walk step (mm).
    persistence_mm : float, default 15.0
        Relaxation length of the direction back to the initial one (mm).
    min_length_mm : float, default 4.0
        Shorter veins are dropped.

    Returns
    -------
    list of Vein
    """
    b0 = np.asarray(b0_world, dtype=np.float64)
    b0 /= np.linalg.norm(b0)
    cand = np.flatnonzero(starts)
    if cand.size == 0 or count <= 0:
        return []
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    aff = np.asarray(affine, dtype=np.float64)
    shape = np.array(inside.shape)
    kick = np.sqrt(step_mm) * np.deg2rad(15.0) / np.sqrt(10.0)
    relax = step_mm / float(persistence_mm)
    names = list(VEIN_CATEGORIES)

    def is_inside(p: np.ndarray) -> bool:
        ijk = np.rint(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= shape):
            return False
        return bool(inside[ijk[0], ijk[1], ijk[2]])

    veins = []
    for v in range(int(count)):
        category = names[v % len(names)]
        d0 = _direction(rng, b0, VEIN_CATEGORIES[category])
        start_ijk = np.array(np.unravel_index(cand[rng.integers(cand.size)], inside.shape))
        start = aff[:3, :3] @ start_ijk + aff[:3, 3]
        target = rng.uniform(*length_mm)
        radius = float(rng.uniform(*radius_mm))
        chi = float(rng.uniform(*chi_ppm))
        halves = []
        for sign in (1.0, -1.0):
            p, d, pts = start.copy(), sign * d0, []
            for _ in range(int(target / 2.0 / step_mm)):
                d = d + kick * rng.standard_normal(3) + relax * (sign * d0 - d)
                d /= np.linalg.norm(d)
                p = p + step_mm * d
                if not is_inside(p):
                    break
                pts.append(p.copy())
            halves.append(pts)
        pts = [*halves[1][::-1], start, *halves[0]]
        if len(pts) < 2:
            continue
        vein = Vein(np.asarray(pts), radius, chi, category)
        if vein.length_mm >= min_length_mm:
            veins.append(vein)
    return veins


def _densify(points: np.ndarray, step: float) -> np.ndarray:
    seg = np.diff(points, axis=0)
    out = [points[:1]]
    for a, s in zip(points[:-1], seg, strict=True):
        n = max(1, int(np.ceil(np.linalg.norm(s) / step)))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(a + t * s)
    return np.concatenate(out)


def tube_occupancy(
    vein: Vein, affine: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume occupancy (0..1) of a tube on a voxel grid, mass conserving.

    The profile across the tube is 1 inside ``r - h/2`` and falls linearly to 0 at
    ``r + h/2`` (``h`` the voxel size), with ``r`` raised to at least ``h/2`` for tubes
    thinner than a voxel; it is then scaled (at most to 1) so that the summed occupancy
    times the voxel volume equals the volume of the tube with its rounded ends,
    ``pi r^2 L + 4/3 pi r^3``: a sub-voxel vein keeps its dipole moment and hence its far
    field.

    Parameters
    ----------
    vein : Vein
        Centre line (world mm) and radius (mm).
    affine : (4, 4) array
        Voxel-to-world affine of the grid (isotropic voxels assumed for ``h``).
    shape : 3 ints
        Grid shape.

    Returns
    -------
    (flat_index int64 (M,), occupancy float32 (M,))
        The voxels the tube touches and their occupancy.
    """
    aff = np.asarray(affine, dtype=np.float64)
    h = float(np.mean(np.linalg.norm(aff[:3, :3], axis=0)))
    r = float(vein.radius_mm)
    r_eff = max(r, h / 2.0)
    reach = r_eff + h / 2.0
    dense = _densify(vein.points_mm, min(0.1, r / 2.0))
    inv = np.linalg.inv(aff)
    ijk = np.rint(dense[:: max(1, int(h / 0.2))] @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    k = int(np.ceil(reach / h)) + 1
    off = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    off = off[np.linalg.norm(off, axis=1) * h <= reach + h]
    cand = np.unique((ijk[:, None, :] + off[None]).reshape(-1, 3), axis=0)
    ok = np.all((cand >= 0) & (cand < np.asarray(shape)), axis=1)
    cand = cand[ok]
    world = cand @ aff[:3, :3].T + aff[:3, 3]
    dist, _ = cKDTree(dense).query(world, distance_upper_bound=reach)
    keep = np.isfinite(dist) & (dist < reach)
    cand, dist = cand[keep], dist[keep]
    occ = np.clip((r_eff - dist) / h + 0.5, 0.0, 1.0)
    total = occ.sum() * h**3
    if total > 0:
        volume = np.pi * r * r * vein.length_mm + 4.0 / 3.0 * np.pi * r**3
        occ = np.minimum(occ * (volume / total), 1.0)
    flat = np.ravel_multi_index(cand.T, tuple(int(n) for n in shape))
    return flat.astype(np.int64), occ.astype(np.float32)


def sphere_occupancy(
    centre_mm: np.ndarray, radius_mm: float, affine: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume occupancy of a sphere (linear edge over one voxel), as flat indices."""
    aff = np.asarray(affine, dtype=np.float64)
    h = float(np.mean(np.linalg.norm(aff[:3, :3], axis=0)))
    inv = np.linalg.inv(aff)
    c = inv[:3, :3] @ np.asarray(centre_mm, dtype=np.float64) + inv[:3, 3]
    k = int(np.ceil(radius_mm / h)) + 2
    lo = np.maximum(np.floor(c).astype(int) - k, 0)
    hi = np.minimum(np.floor(c).astype(int) + k + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                indexing="ij"), -1).reshape(-1, 3)  # fmt: skip
    world = grid @ aff[:3, :3].T + aff[:3, 3]
    d = np.linalg.norm(world - np.asarray(centre_mm), axis=1)
    occ = np.clip((radius_mm - d) / h + 0.5, 0.0, 1.0)
    keep = occ > 0
    flat = np.ravel_multi_index(grid[keep].T, tuple(int(n) for n in shape))
    return flat.astype(np.int64), occ[keep].astype(np.float32)


def render_tubes(
    veins: Sequence[Vein],
    affine: np.ndarray,
    maps: dict[str, np.ndarray],
    values: dict[str, float],
    *,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Blend veins into fine-grid maps in place: ``m = (1 - occ) m + occ value``.

    Parameters
    ----------
    veins : sequence of Vein
        Tubes to draw; the ``"chi"`` map takes each vein's own ``chi_ppm``.
    affine : (4, 4) array
        Voxel-to-world affine of the maps.
    maps : dict name -> float32 3D array
        Maps to blend (e.g. ``chi``, ``m0``, ``r2star``); modified in place.
    values : dict name -> float
        Value inside a vein for every map but ``chi``.
    allowed : bool 3D array or None, default None
        Voxels that may be changed (e.g. the brain); None: all.

    Returns
    -------
    float32 3D array
        Largest occupancy of any vein per voxel (0 where none).
    """
    shape = next(iter(maps.values())).shape
    occ_max = np.zeros(shape, dtype=np.float32)
    flat_max = occ_max.reshape(-1)
    flat_maps = {k: v.reshape(-1) for k, v in maps.items()}
    allowed_flat = None if allowed is None else np.asarray(allowed).reshape(-1)
    for vein in veins:
        idx, occ = tube_occupancy(vein, affine, shape)
        if allowed_flat is not None:
            occ = occ * allowed_flat[idx]
        for name, m in flat_maps.items():
            value = vein.chi_ppm if name == "chi" else values[name]
            m[idx] = (1.0 - occ) * m[idx] + occ * np.float32(value)
        flat_max[idx] = np.maximum(flat_max[idx], occ)
    return occ_max


# --------------------------------------------------------------------------------------
# Iron gradients in the deep grey nuclei
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IronProfile:
    """Where the iron of one nucleus rises.

    Attributes
    ----------
    mode : str
        "ramp": linear along ``direction``; "centre": rising towards the centre.
    centre_mm : float64 (3,)
        Nucleus centroid (source/MNI world mm; x as distance from the midline, ``|x|``).
    direction : float64 (3,)
        Unit direction of the ramp (same coordinates).
    half_extent_mm : float
        Half range of the projection (ramp) or largest radius (centre) over the nucleus.
    """

    mode: str
    centre_mm: np.ndarray
    direction: np.ndarray
    half_extent_mm: float


def iron_profile(points_mm: np.ndarray, profile: IronProfile) -> np.ndarray:
    """Iron modulation ``s`` in about [-1, 1] at points of a nucleus.

    Parameters
    ----------
    points_mm : float array (3, N)
        Source (MNI) world coordinates of the points; their x is folded to ``|x|`` so that
        "lateral" means away from the midline in both hemispheres.
    profile : IronProfile
        The nucleus' profile.

    Returns
    -------
    float32 (N,)
        ``(p - c) . u / half_extent`` (ramp) or ``1 - 2 |p - c| / radius`` clipped to
        [-1, 1] (centre); the value is +1 where the iron is highest.
    """
    p = np.asarray(points_mm, dtype=np.float64).copy()
    p[0] = np.abs(p[0])
    rel = p - profile.centre_mm[:, None]
    if profile.mode == "ramp":
        s = (profile.direction @ rel) / profile.half_extent_mm
    else:
        s = 1.0 - 2.0 * np.linalg.norm(rel, axis=0) / profile.half_extent_mm
    return np.clip(s, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# White-matter microstructure (orientation-dependent frequency offset)
# --------------------------------------------------------------------------------------


def microstructure_offset_ppm(
    fibres_world: np.ndarray, b0_world: Sequence[float], amplitude_ppm: float
) -> np.ndarray:
    """Orientation-dependent white-matter frequency offset (ppm of B0), not from scalar chi.

    ``offset = -a (sin^2 theta - 2/3)``, ``theta`` the angle between the fibre and B0: the
    sin^2 theta dependence of the hollow-cylinder / generalised Lorentzian models of
    myelinated axons (Wharton & Bowtell, PNAS 2012); the 2/3 (the mean of sin^2 theta over
    isotropic orientations) makes it zero on average, so that it adds orientation contrast
    but no mean shift. Fibres perpendicular to B0 get the lower frequency, as the optic
    radiation does in gradient-echo phase.

    Parameters
    ----------
    fibres_world : float array (N, 3)
        Fibre directions (world, any length > 0).
    b0_world : 3 floats
        B0 direction (world).
    amplitude_ppm : float
        ``a`` (ppm); a few ppb (0.005 by default in the realistic phantom).

    Returns
    -------
    float32 (N,)
        Offset in ppm (between ``-a/3`` and ``+2a/3``).
    """
    v = np.asarray(fibres_world, dtype=np.float32)
    b = np.asarray(b0_world, dtype=np.float32)
    b = b / np.linalg.norm(b)
    cos2 = (v @ b) ** 2 / np.maximum((v * v).sum(axis=1), np.float32(1e-12))
    sin2 = 1.0 - cos2
    return (-np.float32(amplitude_ppm) * (sin2 - np.float32(2.0 / 3.0))).astype(np.float32)
