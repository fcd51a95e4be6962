"""Realistic head phantom: the anatomy of a subject on a grid finer than the acquisition.

The "ideal" phantom (:mod:`qsm_bids.simulate.phantom`) is piecewise constant and is
simulated with the reconstruction's own dipole kernel on the reconstruction's own grid: the
"inverse crime", under which weak regularisation looks far better than it does on a real
brain. This module builds the same subject (same rigid motion, deformation and
acquisition grid as :func:`~qsm_bids.simulate.phantom.make_subject`) on a *fine* grid
``upsample`` times finer along each axis (default 2: 0.5 mm for a 1 mm acquisition, 1 mm
for 2 mm), following the design of the QSM challenge 2.0 phantom (Marques et al., MRM
2021): susceptibility, proton density and R2* with sub-voxel structure, whose field and
signal are computed on the fine grid and only then brought to the acquisition grid by
k-space truncation (:mod:`qsm_bids.simulate.realistic_forward`).

Anatomy. The 1 mm MNI152 2009a / AAL3 master phantom is not copied voxel by voxel; its
smooth ingredients are interpolated linearly at every fine voxel (through the subject's
motion) so that boundaries are smooth at the fine scale: the brain and head masks (binary
masks smoothed by a 0.6 mm Gaussian, threshold 0.5), the CSF/GM/WM template fractions, the
distance outside the brain that defines the CSF rim (2.5 mm), skull (to 9 mm) and scalp,
the air cavities, the large veins (superior sagittal and straight sinus) and each deep grey
nucleus (smoothed indicators). Tissue classes are then sharp on the fine grid (no
fraction mixing): partial volume arises where it does in a scanner, from the
acquisition.

Structure added on the fine grid (see :mod:`qsm_bids.simulate.structure` for the models):

* cortical folding: gyral crowns and ~1 mm sulcal CSF sheets (correlation ~12 mm);
* small veins in every orientation to B0 (radius 0.3-1 mm, chi 0.30-0.45 ppm; about one
  per 10 ml of brain), besides the large sinuses (0.35 ppm);
* iron gradients in the deep grey nuclei: chi and R2* rise by +-25-45 % along an
  anatomical direction (caudate: anterior; putamen: posterolateral; thalamus: posterior)
  or towards the centre (pallidum, substantia nigra, red nucleus); each nucleus' mean stays
  the literature value times a per-subject factor 1 + N(0, 0.08) (clipped at 2 sigma);
* smooth variation of white matter (SD 3 ppb, ~25 mm) and grey matter (SD 3 ppb, ~8 mm)
  susceptibility, proton density (SD 5 %, ~30 mm);
* a fibre orientation field in white matter (correlation ~20 mm) for the microstructure
  frequency offset (a few ppb, orientation dependent), which the forward model adds to the
  field and the truth susceptibility never contains;
* optionally, small diamagnetic calcification-like spheres (radius 0.75-1.5 mm, -0.2 to
  -0.6 ppm), off by default.

Units: susceptibility in ppm relative to water/CSF (air +9.4 ppm), R2* in 1/s at the
subject's field strength, proton density relative (CSF = 1), lengths in mm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from qsm_bids.simulate import structure as st
from qsm_bids.simulate.phantom import (
    _CSF_RIM_MM,
    _SKULL_OUTER_MM,
    AIR_EAR,
    AIR_SINUS,
    BACKGROUND,
    CAUDATE,
    CHI_PPM,
    CSF,
    GM,
    LABEL_NAMES,
    M0,
    PALLIDUM,
    PUTAMEN,
    R2STAR_3T,
    RN,
    SCALP,
    SKULL,
    SN,
    THALAMUS,
    VEIN,
    WM,
    HeadPhantom,
    _load_templates,
    _master_phantom,
    r2star_scale,
)
from qsm_bids.simulate.resample import (
    block_average,
    block_mode,
    fine_affine,
    resample_linear,
)

NUCLEI: tuple[int, ...] = (CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, SN, RN)

#: Gaussian sigma (mm) that smooths binary masks of the 1 mm master before interpolation.
MASK_SMOOTHING_MM = 0.6

#: Fine voxels per slab when sampling the master phantom (memory bound, ~100 MB).
_SLAB_VOXELS = 2_000_000

#: Iron profile per nucleus: mode and (for ramps) the direction in source world axes
#: (x = |x| lateral, y anterior, z superior).
_IRON: dict[int, tuple[str, tuple[float, float, float]]] = {
    CAUDATE: ("ramp", (0.0, 1.0, 0.0)),  # head of the caudate richer
    PUTAMEN: ("ramp", (0.5, -1.0, 0.0)),  # posterolateral putamen richer
    PALLIDUM: ("centre", (0.0, 0.0, 0.0)),
    THALAMUS: ("ramp", (0.0, -1.0, 0.0)),  # pulvinar richer
    SN: ("centre", (0.0, 0.0, 0.0)),
    RN: ("centre", (0.0, 0.0, 0.0)),
}


@dataclass(frozen=True)
class RealismOptions:
    """Switches and sizes of the realistic phantom's features (defaults: all on but
    calcifications).

    Attributes
    ----------
    upsample : int, default 2
        Fine voxels per acquired voxel along each axis (>= 2 avoids the inverse crime).
    folding : float, default 0.35
        Amplitude of the cortical folding (:func:`~qsm_bids.simulate.structure.fold_cortex`);
        0: the template's smooth cortex.
    fold_corr_mm : float, default 12.0
        Correlation length of the folding pattern (mm).
    sulcus_width : float, default 0.12
        Width of the sulcal CSF sheets in units of the folding field (~1 mm).
    small_veins : int or None, default None
        Number of small veins; None: one per 10 ml of brain (~150).
    vein_radius_mm : (float, float), default (0.3, 1.0)
        Range of the small veins' radii (mm).
    vein_chi_ppm : (float, float), default (0.30, 0.45)
        Range of the small veins' susceptibility (ppm).
    iron_gradient : float, default 0.35
        Mean relative amplitude of the iron gradients in deep grey nuclei (each nucleus
        draws 0.7-1.3 times this); 0: constant nuclei.
    wm_variation_ppm : float, default 0.003
        SD of the smooth white-matter susceptibility variation (ppm, ~25 mm).
    gm_texture_ppm : float, default 0.003
        SD of the grey-matter susceptibility texture (ppm, ~8 mm).
    anisotropy_ppm : float, default 0.012
        Amplitude ``a`` of the white-matter microstructure field offset
        ``-a (sin^2 theta - 2/3)`` (ppm); 0: none. ``a`` is the difference between fibres
        along and across B0: about 4 Hz at 7 T, 12 ppb, in the measurements of Wharton and
        Bowtell (PNAS 2012). With 5 ppb the simulated field was far more consistent with
        the scalar dipole model than the 2016 challenge brain's (cone inconsistency 0.32
        of its RMS at SNR 40, against 0.63 for the real field) and weakly regularised
        inversions won, as on the ideal phantom.
    fibre_corr_mm : float, default 20.0
        Correlation length of the fibre orientation field (mm).
    calcifications : int, default 0
        Number of calcification-like diamagnetic spheres.
    value_variation : float, default 0.08
        Relative SD of the per-subject deep grey values.
    """

    upsample: int = 2
    folding: float = 0.35
    fold_corr_mm: float = 12.0
    sulcus_width: float = 0.12
    small_veins: int | None = None
    vein_radius_mm: tuple[float, float] = (0.3, 1.0)
    vein_chi_ppm: tuple[float, float] = (0.30, 0.45)
    iron_gradient: float = 0.35
    wm_variation_ppm: float = 0.003
    gm_texture_ppm: float = 0.003
    anisotropy_ppm: float = 0.012
    fibre_corr_mm: float = 20.0
    calcifications: int = 0
    value_variation: float = 0.08


@dataclass
class FineSubject:
    """A subject on the fine grid, with what the forward model and the truth need.

    Attributes
    ----------
    chi : float32 (X, Y, Z)
        Susceptibility (ppm relative to water/CSF; air +9.4).
    m0 : float32 (X, Y, Z)
        Relative proton density (CSF = 1).
    r2star : float32 (X, Y, Z)
        R2* (1/s) at ``field_strength_t``.
    labels : int16 (X, Y, Z)
        Segmentation (:data:`~qsm_bids.simulate.phantom.LABEL_NAMES`).
    brain_mask : bool (X, Y, Z)
        Brain (the sources of the local field).
    affine : float64 (4, 4)
        Fine-grid affine (:func:`~qsm_bids.simulate.resample.fine_affine` of the output).
    factor : int
        Fine voxels per output voxel along each axis.
    output : HeadPhantom
        The :func:`~qsm_bids.simulate.phantom.make_subject` subject whose grid, motion and
        field strength this one shares (its own maps are the ideal phantom's).
    veins : list of Vein
        The small veins drawn (world mm centre lines).
    fibre_index : int64 (N,)
        Flat fine-grid indices of the white-matter voxels that carry a fibre direction.
    fibres : float32 (N, 3)
        Unit fibre directions (world axes) at ``fibre_index``.
    options : RealismOptions
        The options used.
    """

    chi: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    factor: int
    output: HeadPhantom
    veins: list[st.Vein]
    fibre_index: np.ndarray
    fibres: np.ndarray
    options: RealismOptions = field(default_factory=RealismOptions)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Fine grid shape (voxels)."""
        return tuple(int(n) for n in self.chi.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Fine voxel edge lengths (mm)."""
        return tuple(float(v) / self.factor for v in self.output.voxel_size)  # type: ignore[return-value]

    @property
    def field_strength_t(self) -> float:
        """B0 (T) that ``r2star`` refers to."""
        return float(self.output.field_strength_t)

    def truth(self) -> HeadPhantom:
        """The truth on the output grid: every map block-averaged over its fine voxels.

        The susceptibility truth is the mean of the fine susceptibility within each output
        voxel (the QSM challenge 2.0 choice): what a perfect reconstruction of the voxel can
        mean, and, unlike a k-space truncated one, free of Gibbs ringing around veins and
        air and linear in the partial volume. Likewise R2* and M0 (means); labels are each
        block's most frequent label; the brain mask is the voxels at least half brain, the
        tissue mask (sources of the true local field) the voxels entirely brain.

        Returns
        -------
        HeadPhantom
            On the output grid (``self.output``'s affine, motion and field strength).
        """
        f = self.factor
        frac = block_average(self.brain_mask, f)
        labels = block_mode(self.labels, f)
        return HeadPhantom(
            chi=block_average(self.chi, f),
            labels=labels,
            brain_mask=frac >= 0.5,
            head_mask=labels != BACKGROUND,
            m0=block_average(self.m0, f),
            r2star=block_average(self.r2star, f),
            affine=np.asarray(self.output.affine, dtype=np.float64).copy(),
            voxel_size=tuple(float(v) for v in self.output.voxel_size),  # type: ignore[arg-type]
            field_strength_t=self.field_strength_t,
            label_names=dict(self.output.label_names),
            tissue_mask=frac >= 1.0 - 1e-6,
            motion=self.output.motion,
        )


# --------------------------------------------------------------------------------------
# Smooth ingredients of the 1 mm master phantom (cached)
# --------------------------------------------------------------------------------------


def _box(mask: np.ndarray, margin: int = 3) -> tuple[np.ndarray, np.ndarray]:
    nz = np.argwhere(mask)
    return nz.min(0) - margin, nz.max(0) + margin


@functools.lru_cache(maxsize=1)
def _master_channels() -> dict:
    """Channels of the 1 mm master phantom to interpolate at fine voxels (read-only).

    ``brain``, ``head``, ``air``, ``vein`` and one per nucleus: binary masks smoothed by
    :data:`MASK_SMOOTHING_MM`; ``csf``/``gm``/``wm``: the sharpened template fractions of
    the master (cube and normalise, as the master phantom classifies); ``dist``: distance
    outside the brain (mm); ``labels``: the master labels (nearest neighbour); boxes of
    the nuclei and veins (voxels); the nuclei's iron-profile geometry.
    """
    base = _master_phantom()
    tpl = _load_templates()
    labels = np.asarray(base["labels"])
    brain = np.asarray(base["brain"])
    shape = labels.shape
    aff = np.asarray(base["affine"])

    # template fractions on the master's (padded, cropped) grid
    off = np.rint(np.linalg.solve(tpl["affine"], aff[:, 3])[:3]).astype(int)
    fr = np.zeros((3, *shape), dtype=np.float32)
    src = tuple(
        slice(max(0, o), min(t, o + n)) for o, n, t in zip(off, shape, tpl["gm"].shape, strict=True)
    )
    dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, off, strict=True))
    fr[1][dst] = tpl["gm"][src]
    fr[2][dst] = tpl["wm"][src]
    fr[0] = np.clip(1.0 - fr[1] - fr[2], 0.0, 1.0)
    fr **= 3
    total = fr.sum(0)
    fr /= np.maximum(total, 1e-6)
    fr[0][total < 1e-6] = 1.0

    def smooth(m: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(m.astype(np.float32), MASK_SMOOTHING_MM)

    out: dict = {
        "brain": smooth(brain),
        "head": smooth(labels != BACKGROUND),
        "air": smooth(np.isin(labels, (AIR_SINUS, AIR_EAR))),
        "vein": smooth(labels == VEIN),
        "csf": fr[0],
        "gm": fr[1],
        "wm": fr[2],
        "dist": ndimage.distance_transform_edt(~brain).astype(np.float32),
        "labels": labels,
        "affine": aff,
    }
    nuclei = np.isin(labels, NUCLEI)
    out["nuclei_box"] = _box(nuclei)
    out["vein_box"] = _box(labels == VEIN)
    out["air_box"] = _box(np.isin(labels, (AIR_SINUS, AIR_EAR)))
    geometry = {}
    for lab in NUCLEI:
        sel = labels == lab
        out[f"n{lab}"] = smooth(sel)
        ijk = np.argwhere(sel).T.astype(np.float64)
        world = aff[:3, :3] @ ijk + aff[:3, 3:4]
        world[0] = np.abs(world[0])
        geometry[lab] = world
    out["nuclei_world"] = geometry
    for v in out.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return out


def _iron_profiles(
    rng: np.random.Generator, channels: dict, gain: float
) -> dict[int, tuple[st.IronProfile, float]]:
    """Per-subject iron profile and gain of each nucleus."""
    out = {}
    for lab in NUCLEI:
        mode, direction = _IRON[lab]
        world = channels["nuclei_world"][lab]
        centre = world.mean(axis=1)
        d = np.asarray(direction, dtype=np.float64)
        d = d + 0.2 * rng.standard_normal(3) if mode == "ramp" else rng.standard_normal(3)
        d /= np.linalg.norm(d)
        rel = world - centre[:, None]
        if mode == "ramp":
            half = float(np.abs(d @ rel).max())
        else:
            half = float(np.linalg.norm(rel, axis=0).max())
        g = float(gain) * float(rng.uniform(0.7, 1.3))
        out[lab] = (st.IronProfile(mode, centre, d, max(half, 1.0)), g)
    return out


def _in_box(pts: np.ndarray, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    lo, hi = box
    return np.all((pts >= lo[:, None]) & (pts <= hi[:, None]), axis=0)


def _sample(ch: np.ndarray, pts: np.ndarray, *, order: int = 1, edge: bool = False):
    """Interpolate a master channel at master voxel coordinates (3, N); outside the
    master grid: 0 (masks) or, with ``edge``, the nearest edge value."""
    mode = "nearest" if edge else "constant"
    return ndimage.map_coordinates(ch, pts, order=order, mode=mode, cval=0.0, prefilter=False)


def _source_voxels(grid: HeadPhantom, master_affine: np.ndarray) -> np.ndarray:
    """Master voxel coordinates (3, X, Y, Z) of the output grid's voxel centres."""
    shape = grid.shape
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    aff = np.asarray(grid.affine, dtype=np.float64)
    world = aff[:3, :3].astype(np.float32) @ ijk + aff[:3, 3:4].astype(np.float32)
    del ijk
    src = grid.motion.to_source(world) if grid.motion is not None else world
    inv = np.linalg.inv(master_affine)
    vox = inv[:3, :3].astype(np.float32) @ src + inv[:3, 3:4].astype(np.float32)
    return vox.reshape(3, *shape)


def _lut(table: dict[int, float]) -> np.ndarray:
    lut = np.zeros(max(LABEL_NAMES) + 1, dtype=np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut


# --------------------------------------------------------------------------------------
# The fine subject
# --------------------------------------------------------------------------------------


def crop_grid(grid: HeadPhantom, region: tuple[slice, slice, slice]) -> HeadPhantom:
    """A block of a subject's acquisition grid, to simulate only a region (fast tests).

    The maps, masks and labels are cut to ``region`` (slices of voxel indices, unit step)
    and the affine's origin moved to the block's first voxel; the motion is kept, so that
    :func:`make_fine_subject` of the block builds the same anatomy there. Its fields are
    those of the sources inside the block only (air and tissue outside it are missing).

    Parameters
    ----------
    grid : HeadPhantom
        A subject (e.g. from :func:`~qsm_bids.simulate.phantom.make_subject`).
    region : 3 slices
        Voxel ranges of the block along each axis.

    Returns
    -------
    HeadPhantom
        The block, with its own affine.
    """
    sl = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, grid.shape, strict=True))
    start = np.array([s.start for s in sl], dtype=np.float64)
    aff = np.asarray(grid.affine, dtype=np.float64).copy()
    aff[:3, 3] = aff[:3, :3] @ start + aff[:3, 3]
    return HeadPhantom(
        chi=np.ascontiguousarray(grid.chi[sl]),
        labels=np.ascontiguousarray(grid.labels[sl]),
        brain_mask=np.ascontiguousarray(grid.brain_mask[sl]),
        head_mask=np.ascontiguousarray(grid.head_mask[sl]),
        m0=np.ascontiguousarray(grid.m0[sl]),
        r2star=np.ascontiguousarray(grid.r2star[sl]),
        affine=aff,
        voxel_size=grid.voxel_size,
        field_strength_t=grid.field_strength_t,
        label_names=dict(grid.label_names),
        tissue_mask=None
        if grid.tissue_mask is None
        else np.ascontiguousarray(grid.tissue_mask[sl]),
        motion=grid.motion,
    )


def make_fine_subject(
    grid: HeadPhantom, *, seed: int = 0, options: RealismOptions | None = None
) -> FineSubject:
    """Build the realistic phantom of a subject on the fine grid of its acquisition grid.

    Parameters
    ----------
    grid : HeadPhantom
        The subject's acquisition: normally :func:`~qsm_bids.simulate.phantom.make_subject`
        of :func:`~qsm_bids.simulate.phantom.make_head_phantom` at the output resolution
        (its affine, shape, motion and field strength are used; a phantom without motion,
        such as ``make_head_phantom(4.0)``, is taken as it lies). Its voxel size and
        ``options.upsample`` set the fine voxel size; a coarse ``grid`` (e.g. 4 mm) or a
        block of one (:func:`crop_grid`) gives a fast, small phantom for tests.
    seed : int, default 0
        Seed of the realistic structure (folding, veins, iron, textures, fibres).
    options : RealismOptions or None, default None
        Feature switches and sizes; None: the defaults.

    Returns
    -------
    FineSubject
        Fine-grid maps, the small veins, the fibre field and the output grid.
    """
    opts = options or RealismOptions()
    f = int(opts.upsample)
    if f < 1:
        raise ValueError("upsample must be >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 6151]))
    ch = _master_channels()
    out_shape = grid.shape
    shape = tuple(f * n for n in out_shape)
    aff = fine_affine(grid.affine, f)
    vox = float(np.mean(grid.voxel_size)) / f
    b0_scale = r2star_scale(grid.field_strength_t)

    # per-subject draws (fixed order: deterministic for a seed)
    fold = st.SmoothField(rng, shape, vox, opts.fold_corr_mm)
    gm_tex = st.SmoothField(rng, shape, vox, 8.0)
    wm_var = st.SmoothField(rng, shape, vox, 25.0)
    m0_tex = st.SmoothField(rng, shape, vox, 30.0)
    fibre_fields = [st.SmoothField(rng, shape, vox, opts.fibre_corr_mm) for _ in range(3)]
    vv = float(opts.value_variation)
    nucleus_scale = {
        lab: 1.0 + float(np.clip(rng.normal(0.0, vv), -2 * vv, 2 * vv)) if vv > 0 else 1.0
        for lab in NUCLEI
    }
    iron = _iron_profiles(rng, ch, opts.iron_gradient)

    chi_lut, m0_lut = _lut(CHI_PPM), _lut(M0)
    r2_lut = _lut(R2STAR_3T) * np.float32(b0_scale)
    labels = np.empty(shape, dtype=np.int16)
    chi = np.empty(shape, dtype=np.float32)
    m0 = np.empty(shape, dtype=np.float32)
    r2 = np.empty(shape, dtype=np.float32)
    brain = np.empty(shape, dtype=bool)

    src_out = _source_voxels(grid, ch["affine"])
    maff = ch["affine"]
    pos_xy = [(np.arange(f * n) - (f - 1) / 2.0) / f for n in out_shape[:2]]
    step = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    for k0 in range(0, shape[2], step):
        k1 = min(k0 + step, shape[2])
        pz = (np.arange(k0, k1) - (f - 1) / 2.0) / f
        lo = int(np.clip(np.floor(pz.min()), 0, max(out_shape[2] - 2, 0)))
        hi = int(min(out_shape[2], max(np.floor(pz.max()) + 2, lo + 2)))
        sub = src_out[:, :, :, lo:hi]
        pts = np.stack([resample_linear(sub[c], [*pos_xy, pz - lo]) for c in range(3)])
        pts = pts.reshape(3, -1)
        sl = (slice(0, shape[0]), slice(0, shape[1]), slice(k0, k1))
        slab = _label_points(pts, ch, fold.block(sl).reshape(-1), opts)
        lab, is_brain = slab
        c = chi_lut[lab]
        m = m0_lut[lab]
        r = r2_lut[lab]
        if opts.gm_texture_ppm:
            sel = lab == GM
            c[sel] += np.float32(opts.gm_texture_ppm) * gm_tex.block(sl).reshape(-1)[sel]
        if opts.wm_variation_ppm:
            sel = lab == WM
            c[sel] += np.float32(opts.wm_variation_ppm) * wm_var.block(sl).reshape(-1)[sel]
        m[is_brain] *= 1.0 + np.float32(0.05) * m0_tex.block(sl).reshape(-1)[is_brain]
        for nuc in NUCLEI:
            sel = np.flatnonzero(lab == nuc)
            if sel.size == 0:
                continue
            profile, g = iron[nuc]
            world = maff[:3, :3] @ pts[:, sel] + maff[:3, 3:4]
            s = st.iron_profile(world, profile)
            c[sel] *= np.float32(nucleus_scale[nuc]) * (1.0 + np.float32(g) * s)
            r[sel] *= np.float32(1.0 + 0.5 * (nucleus_scale[nuc] - 1.0)) * (
                1.0 + np.float32(0.5 * g) * s
            )
        out_sl = (slice(None), slice(None), slice(k0, k1))
        labels[out_sl] = lab.reshape(shape[0], shape[1], k1 - k0)
        chi[out_sl] = c.reshape(labels[out_sl].shape)
        m0[out_sl] = m.reshape(labels[out_sl].shape)
        r2[out_sl] = r.reshape(labels[out_sl].shape)
        brain[out_sl] = is_brain.reshape(labels[out_sl].shape)
    del src_out

    # each nucleus keeps its (per-subject) literature mean: the gradient redistributes iron
    for nuc in NUCLEI:
        sel = labels == nuc
        if sel.any():
            target = CHI_PPM[nuc] * nucleus_scale[nuc]
            chi[sel] *= np.float32(target / float(chi[sel].mean(dtype=np.float64)))

    # small veins in every orientation, then calcifications
    n_veins = opts.small_veins
    if n_veins is None:
        n_veins = int(round(brain.sum() * vox**3 * 1e-3 / 10.0))
    veins = st.vein_centrelines(
        rng,
        brain & (labels != CSF),
        aff,
        brain & np.isin(labels, (GM, WM)),
        n_veins,
        radius_mm=opts.vein_radius_mm,
        chi_ppm=opts.vein_chi_ppm,
    )
    maps = {"chi": chi, "m0": m0, "r2star": r2}
    occ = st.render_tubes(
        veins, aff, maps, {"m0": M0[VEIN], "r2star": R2STAR_3T[VEIN] * b0_scale}, allowed=brain
    )
    labels[occ >= 0.5] = VEIN
    del occ
    _add_calcifications(rng, opts.calcifications, labels, brain, aff, maps, b0_scale)

    # fibre directions of the white matter (world axes)
    fibre_index = np.flatnonzero(labels == WM)
    ijk = np.stack(np.unravel_index(fibre_index, shape))
    fibres = np.stack([fld.at(ijk) for fld in fibre_fields], axis=1)
    fibres /= np.maximum(np.linalg.norm(fibres, axis=1, keepdims=True), np.float32(1e-6))
    return FineSubject(
        chi=chi,
        m0=m0,
        r2star=r2,
        labels=labels,
        brain_mask=brain,
        affine=aff,
        factor=f,
        output=grid,
        veins=veins,
        fibre_index=fibre_index.astype(np.int64),
        fibres=fibres.astype(np.float32),
        options=opts,
    )


def _label_points(
    pts: np.ndarray, ch: dict, fold_noise: np.ndarray, opts: RealismOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int16) and brain flags of points given as master voxel coordinates (3, N)."""
    n = pts.shape[1]
    lab = np.full(n, BACKGROUND, dtype=np.int16)
    brain = _sample(ch["brain"], pts) >= 0.5
    head = brain | (_sample(ch["head"], pts) >= 0.5)

    # brain: folded tissue classes, then nuclei and the large veins (smoothed indicators)
    ib = np.flatnonzero(brain)
    if ib.size:
        p = pts[:, ib]
        fr = np.stack([_sample(ch[c], p, edge=True) for c in ("csf", "gm", "wm")])
        lab[ib] = st.fold_cortex(
            fr, fold_noise[ib], amplitude=opts.folding, sulcus_width=opts.sulcus_width
        )
        box = np.flatnonzero(_in_box(p, ch["nuclei_box"]))
        if box.size:
            best = np.full(box.size, 0.5, dtype=np.float32)
            for nuc in NUCLEI:
                v = _sample(ch[f"n{nuc}"], p[:, box])
                take = v >= best
                lab[ib[box[take]]] = nuc
                best = np.maximum(best, v)
        box = np.flatnonzero(_in_box(p, ch["vein_box"]))
        if box.size:
            v = _sample(ch["vein"], p[:, box])
            lab[ib[box[v >= 0.5]]] = VEIN

    # outside the brain: CSF rim, skull and scalp shells, air cavities
    io = np.flatnonzero(head & ~brain)
    if io.size:
        p = pts[:, io]
        d = _sample(ch["dist"], p, edge=True)
        shell = np.where(d <= _CSF_RIM_MM, CSF, np.where(d <= _SKULL_OUTER_MM, SKULL, SCALP))
        lab[io] = shell.astype(np.int16)
        box = np.flatnonzero(_in_box(p, ch["air_box"]))
        if box.size:
            air = (_sample(ch["air"], p[:, box]) >= 0.5) & (d[box] > 3.5)
            nearest = _sample(ch["labels"], p[:, box[air]], order=0)
            lab[io[box[air]]] = np.where(nearest == AIR_EAR, AIR_EAR, AIR_SINUS)
    return lab, brain


def _add_calcifications(
    rng: np.random.Generator,
    count: int,
    labels: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    maps: dict[str, np.ndarray],
    b0_scale: float,
) -> None:
    """Blend ``count`` diamagnetic spheres (radius 0.75-1.5 mm, -0.2 to -0.6 ppm) in place."""
    if count <= 0:
        return
    cand = np.flatnonzero(brain & np.isin(labels, (GM, WM, *NUCLEI)))
    if cand.size == 0:
        return
    flat = {k: v.reshape(-1) for k, v in maps.items()}
    values = {"m0": 0.3, "r2star": 100.0 * b0_scale}
    for _ in range(int(count)):
        ijk = np.array(np.unravel_index(cand[rng.integers(cand.size)], labels.shape))
        centre = affine[:3, :3] @ ijk + affine[:3, 3]
        radius = float(rng.uniform(0.75, 1.5))
        chi = float(rng.uniform(-0.6, -0.2))
        idx, occ = st.sphere_occupancy(centre, radius, affine, labels.shape)
        for name, m in flat.items():
            value = chi if name == "chi" else values[name]
            m[idx] = (1.0 - occ) * m[idx] + occ * np.float32(value)
