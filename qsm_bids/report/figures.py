"""Static figures of the reports (matplotlib, Agg backend), written atomically as PNG or SVG.

Every volume is shown in the closest canonical (RAS+) orientation of its voxel grid, in
neurological convention (the subject's left on the left), with physical (mm) aspect ratio:

* :func:`plot_orthogonal`: sagittal, coronal and axial slices through one point, with
  optional mask contours and a label overlay (the per-run maps of the subject report);
* :func:`plot_registration`: a subject's susceptibility map resampled to the template,
  under the template's brain and white-matter outlines (the registration check);
* :func:`plot_region_distribution`: one box and the individual values per region (the group
  figure).

Nothing here computes a result that is written anywhere else; figures are for looking at.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from qsm_bids.bids.derivatives import write_bytes_atomic  # noqa: E402
from qsm_bids.core import kernels  # noqa: E402
from qsm_bids.registration.template import TEMPLATE_SPACE  # noqa: E402

#: Resolution (dots per inch) of the PNG figures.
DPI = 100

#: (name, colour, line style) of the contours drawn in the figures.
BRAIN_CONTOUR = ("brain mask", "#ff3030", "solid")
LOCAL_CONTOUR = ("background-removal mask", "#ffd000", "dashed")


# --------------------------------------------------------------------------------------
# Input and output
# --------------------------------------------------------------------------------------


def save_figure_atomic(fig: Figure, path: Path) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; it is closed afterwards.
    path : Path
        Destination ending in ``.png`` or ``.svg`` (the format follows the extension); its
        folder is created if needed.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"figures are written as .png or .svg, got {path.name}")
    buffer = io.BytesIO()
    try:
        # fixed metadata keeps the files byte-identical between reruns
        metadata = {"Software": None} if fmt == "png" else {"Date": None}
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def load_ras(
    path: Path, *, all_volumes: bool = False
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Load a NIfTI image reoriented to the closest canonical (RAS+) voxel order.

    Parameters
    ----------
    path : Path
        A 3D or 4D image.
    all_volumes : bool, default False
        ``False``: a 4D image gives its first volume; ``True``: every volume (4D output,
        volumes along the last axis; a 3D image gives one volume).

    Returns
    -------
    data : ndarray, float32
        The voxel values; axes run left->right, posterior->anterior, inferior->superior.
    voxel_mm : tuple of 3 float
        Voxel sizes (mm) along those axes.
    affine : (4, 4) ndarray
        Voxel-to-world (mm) affine of the reoriented grid.
    """
    img = nb.as_closest_canonical(nb.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if all_volumes:
        data = data.reshape(*data.shape[:3], -1)
    while data.ndim > 3 and not all_volumes:
        data = data[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data.astype(np.float32, copy=False), zooms, np.asarray(img.affine)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Orthogonal slices
# --------------------------------------------------------------------------------------


def center_of(
    mask: np.ndarray | None,
    shape: Sequence[int],
    *,
    voxel_mm: Sequence[float] = (1.0, 1.0, 1.0),
    sagittal_offset_mm: float = 0.0,
) -> tuple[int, int, int]:
    """Voxel through which the slices are cut: the mask's centre of mass, else the middle.

    Parameters
    ----------
    mask : ndarray or None
        Boolean (or 0/1) volume in RAS+ order; ``None`` or an empty mask gives the grid's
        middle voxel.
    shape : sequence of 3 int
        Grid shape.
    voxel_mm : sequence of 3 float, default (1.0, 1.0, 1.0)
        Voxel sizes (mm), for ``sagittal_offset_mm``.
    sagittal_offset_mm : float, default 0.0
        Shift of the sagittal slice along the first (left->right) axis, mm; e.g. -20 cuts
        through the left putamen and pallidum rather than the midline.

    Returns
    -------
    tuple of 3 int
        Voxel indices, inside the grid.
    """
    if mask is not None and np.any(mask):
        c = np.argwhere(mask > 0).mean(axis=0)
    else:
        c = np.asarray(shape[:3], dtype=float) / 2.0
    c[0] += sagittal_offset_mm / float(voxel_mm[0])
    return tuple(  # type: ignore[return-value]
        int(np.clip(round(float(v)), 0, int(n) - 1)) for v, n in zip(c, shape[:3], strict=True)
    )


def bounding_box(
    mask: np.ndarray | None, shape: Sequence[int], *, margin: int | Sequence[int] = 3
) -> tuple[slice, slice, slice]:
    """Slices cropping a grid to a mask's bounding box plus ``margin`` voxels (default 3;
    one number, or one per axis).

    Returns the whole grid for ``None`` or an empty mask.
    """
    if mask is None or not np.any(mask):
        return tuple(slice(0, int(n)) for n in shape[:3])  # type: ignore[return-value]
    return kernels.bounding_box(np.asarray(mask) > 0, margin)  # type: ignore[return-value]


def _views(
    vol: np.ndarray, cut: Sequence[int], voxel_mm: Sequence[float]
) -> list[tuple[str, np.ndarray, list[float]]]:
    """(title, 2D slice with rows bottom->top, extent in mm) for sagittal, coronal, axial."""
    i, j, k = (int(c) for c in cut)
    nx, ny, nz = vol.shape[:3]
    vx, vy, vz = (float(v) for v in voxel_mm)
    return [
        ("sagittal", vol[i, :, :].T, [0, ny * vy, 0, nz * vz]),
        ("coronal", vol[:, j, :].T, [0, nx * vx, 0, nz * vz]),
        ("axial", vol[:, :, k].T, [0, nx * vx, 0, ny * vy]),
    ]


def robust_window(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    percentile: float = 99.0,
    symmetric: bool = False,
) -> tuple[float, float]:
    """Display window from percentiles of the (masked, finite) values.

    Parameters
    ----------
    data : ndarray
        Values (any unit).
    mask : ndarray or None, default None
        Voxels to take the percentiles over; ``None`` or empty: every non-zero voxel.
    percentile : float, default 99.0
        Upper percentile; the lower one is ``100 - percentile``.
    symmetric : bool, default False
        ``True``: ``(-m, m)`` with ``m`` the ``percentile`` of ``|data|``.

    Returns
    -------
    tuple of 2 float
        ``(vmin, vmax)``, with ``vmax > vmin``.
    """
    sel = mask > 0 if mask is not None and np.any(mask) else data != 0
    vals = data[sel & np.isfinite(data)]
    if vals.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        m = float(np.percentile(np.abs(vals), percentile))
        m = m if m > 0 else 1.0
        return -m, m
    lo = float(np.percentile(vals, 100.0 - percentile))
    hi = float(np.percentile(vals, percentile))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def plot_orthogonal(
    data: np.ndarray,
    voxel_mm: Sequence[float],
    out_path: Path,
    *,
    cut: Sequence[int] | None = None,
    crop: tuple[slice, slice, slice] | None = None,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    units: str = "",
    title: str = "",
    contours: Sequence[tuple[np.ndarray, str, str, str]] = (),
    labels: np.ndarray | None = None,
) -> Path:
    """Sagittal, coronal and axial slices of a RAS+ volume, written as a PNG or SVG file.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z)
        The volume in RAS+ voxel order (see :func:`load_ras`), any unit.
    voxel_mm : sequence of 3 float
        Voxel sizes (mm), for the aspect ratio.
    out_path : Path
        Destination (``.png`` or ``.svg``), written atomically.
    cut : sequence of 3 int or None, default None
        Voxel the three slices pass through (in the uncropped grid); ``None``: the middle.
        NaN values are drawn black (e.g. a field map set to NaN outside its mask).
    crop : tuple of 3 slice or None, default None
        Part of the grid shown (e.g. :func:`bounding_box` of the brain); ``None``: all.
    cmap : str, default "gray"
        matplotlib colour map.
    vmin, vmax : float or None, default None
        Display window (in the data's unit); ``None``: :func:`robust_window`.
    units : str, default ""
        Colour bar label (e.g. ``"ppm"``, ``"Hz"``); no colour bar when empty.
    title : str, default ""
        Figure title.
    contours : sequence of (mask, legend name, colour, line style), default ()
        Masks (same grid as ``data``) outlined on every slice.
    labels : ndarray of int or None, default None
        Label map (same grid) drawn semi-transparently over the slices (0 = none).

    Returns
    -------
    Path
        ``out_path``.
    """
    data = np.asarray(data, dtype=np.float32)
    if crop is None:
        crop = tuple(slice(0, n) for n in data.shape[:3])  # type: ignore[assignment]
    if cut is None:
        cut = tuple(n // 2 for n in data.shape[:3])
    # cut voxel relative to the cropped grid, kept inside it
    local_cut = [
        int(np.clip(int(c) - s.start, 0, s.stop - s.start - 1))
        for c, s in zip(cut, crop, strict=True)  # type: ignore[arg-type]
    ]
    if vmin is None or vmax is None:
        lo, hi = robust_window(data)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    vol = np.ma.masked_invalid(data[crop])  # NaN (e.g. outside a mask) is drawn black
    views = _views(vol, local_cut, voxel_mm)
    colours = plt.get_cmap(cmap).with_extremes(bad="black")
    contour_views = [
        (_views(np.asarray(m[crop], dtype=np.float32), local_cut, voxel_mm), name, col, ls)
        for m, name, col, ls in contours
        if m is not None and m.shape[:3] == data.shape[:3]
    ]
    label_views = None
    if labels is not None and labels.shape[:3] == data.shape[:3]:
        lab = np.asarray(labels[crop]).astype(np.int64)
        label_views = _views(lab, local_cut, voxel_mm)
        label_cmap = ListedColormap(plt.get_cmap("tab20")(np.arange(20) % 20))

    widths = [v[2][1] for v in views]
    heights = [v[2][3] for v in views]
    panel_h = 2.8
    scale = panel_h / max(heights)
    fig_w = sum(widths) * scale + (0.9 if units else 0.2) + 0.4
    fig = plt.figure(figsize=(max(fig_w, 4.0), panel_h + (0.75 if title else 0.45)))
    fig.patch.set_facecolor("black")
    ratios = list(widths) + ([0.04 * sum(widths)] if units else [])
    gs = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.04)
    image = None
    for n, (name, slab, extent) in enumerate(views):
        ax = fig.add_subplot(gs[0, n])
        image = ax.imshow(
            slab,
            cmap=colours,
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            extent=extent,
            interpolation="nearest",
        )
        if label_views is not None:
            lab2 = label_views[n][1]
            shown = np.ma.masked_where(lab2 <= 0, (lab2 - 1) % 20)
            ax.imshow(
                shown,
                cmap=label_cmap,
                vmin=0,
                vmax=19,
                alpha=0.5,
                origin="lower",
                extent=extent,
                interpolation="nearest",
            )
        for cviews, _name, colour, style in contour_views:
            cslab = cviews[n][1]
            if np.any(cslab > 0.5) and np.any(cslab <= 0.5):
                ax.contour(
                    cslab,
                    levels=[0.5],
                    colors=[colour],
                    linestyles=[style],
                    linewidths=0.9,
                    origin="lower",
                    extent=extent,
                )
        ax.set_axis_off()
        ax.set_title(name, color="white", fontsize=9, pad=2)
        if name != "sagittal":  # neurological convention: subject's left on the left
            ax.text(0.01, 0.02, "L", color="white", fontsize=8, transform=ax.transAxes)
            ax.text(0.97, 0.02, "R", color="white", fontsize=8, transform=ax.transAxes)
        else:
            ax.text(0.01, 0.02, "P", color="white", fontsize=8, transform=ax.transAxes)
            ax.text(0.97, 0.02, "A", color="white", fontsize=8, transform=ax.transAxes)
    if units and image is not None:
        cax = fig.add_subplot(gs[0, len(views)])
        cb = fig.colorbar(image, cax=cax)
        cb.set_label(units, color="white", fontsize=9)
        cb.ax.tick_params(colors="white", labelsize=8)
        cb.outline.set_edgecolor("white")
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    legend = [(name, col, ls) for _, name, col, ls in contour_views]
    if legend:
        handles = [
            plt.Line2D([], [], color=col, linestyle=ls, linewidth=1.2) for _, col, ls in legend
        ]
        fig.legend(
            handles,
            [name for name, _, _ in legend],
            loc="lower center",
            ncol=len(legend),
            fontsize=8,
            frameon=False,
            labelcolor="white",
            borderaxespad=0.1,
        )
    fig.subplots_adjust(left=0.01, right=0.93 if units else 0.99, top=0.86, bottom=0.08)
    return save_figure_atomic(fig, out_path)


def plot_rows(
    rows: Sequence[tuple[str, np.ndarray, float, float]],
    voxel_mm: Sequence[float],
    out_path: Path,
    *,
    cut: Sequence[int] | None = None,
    crop: tuple[slice, slice, slice] | None = None,
    cmap: str = "gray",
    units: str = "",
    title: str = "",
    contour: np.ndarray | None = None,
) -> Path:
    """Sagittal, coronal and axial slices of several volumes, one row per volume.

    Parameters
    ----------
    rows : sequence of (label, data, vmin, vmax)
        Row label (e.g. ``"echo 2, 9.0 ms"``), the volume in RAS+ voxel order (all of the
        same shape) and its display window (in the data's unit).
    voxel_mm : sequence of 3 float
        Voxel sizes (mm), for the aspect ratio.
    out_path : Path
        Destination (``.png`` or ``.svg``), written atomically.
    cut, crop : optional
        As in :func:`plot_orthogonal`.
    cmap : str, default "gray"
        matplotlib colour map (NaN is drawn black).
    units : str, default ""
        Colour bar label of every row; no colour bars when empty.
    title : str, default ""
        Figure title.
    contour : ndarray or None, default None
        A mask (same grid) outlined in red on every slice.

    Returns
    -------
    Path
        ``out_path``.
    """
    if not rows:
        raise ValueError("plot_rows needs at least one row")
    shape = rows[0][1].shape[:3]
    if crop is None:
        crop = tuple(slice(0, n) for n in shape)  # type: ignore[assignment]
    if cut is None:
        cut = tuple(n // 2 for n in shape)
    local_cut = [
        int(np.clip(int(c) - s.start, 0, s.stop - s.start - 1))
        for c, s in zip(cut, crop, strict=True)  # type: ignore[arg-type]
    ]
    colours = plt.get_cmap(cmap).with_extremes(bad="black")
    first = _views(np.zeros([s.stop - s.start for s in crop], np.float32), local_cut, voxel_mm)  # type: ignore[union-attr]
    widths = [v[2][1] for v in first]
    heights = [v[2][3] for v in first]
    panel_h = 2.0
    scale = panel_h / max(heights)
    fig_w = sum(widths) * scale + (0.9 if units else 0.2) + 1.2
    fig = plt.figure(figsize=(max(fig_w, 4.0), panel_h * len(rows) + (0.6 if title else 0.3)))
    fig.patch.set_facecolor("black")
    ratios = list(widths) + ([0.04 * sum(widths)] if units else [])
    gs = fig.add_gridspec(len(rows), len(ratios), width_ratios=ratios, wspace=0.04, hspace=0.12)
    outline = (
        _views(np.asarray(contour[crop], dtype=np.float32), local_cut, voxel_mm)
        if contour is not None and contour.shape[:3] == shape
        else None
    )
    for r, (label, data, vmin, vmax) in enumerate(rows):
        vol = np.ma.masked_invalid(np.asarray(data, dtype=np.float32)[crop])
        image = None
        for n, (name, slab, extent) in enumerate(_views(vol, local_cut, voxel_mm)):
            ax = fig.add_subplot(gs[r, n])
            image = ax.imshow(
                slab,
                cmap=colours,
                vmin=vmin,
                vmax=vmax,
                origin="lower",
                extent=extent,
                interpolation="nearest",
            )
            if outline is not None:
                cslab = outline[n][1]
                if np.any(cslab > 0.5) and np.any(cslab <= 0.5):
                    ax.contour(
                        cslab,
                        levels=[0.5],
                        colors=[BRAIN_CONTOUR[1]],
                        linewidths=0.7,
                        origin="lower",
                        extent=extent,
                    )
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, color="white", fontsize=9, pad=2)
            if n == 0:
                ax.text(
                    -0.04, 0.5, label, color="white", fontsize=8, rotation=90,
                    ha="right", va="center", transform=ax.transAxes,
                )  # fmt: skip
        if units and image is not None:
            cax = fig.add_subplot(gs[r, len(first)])
            cb = fig.colorbar(image, cax=cax)
            cb.set_label(units, color="white", fontsize=8)
            cb.ax.tick_params(colors="white", labelsize=7)
            cb.outline.set_edgecolor("white")
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.subplots_adjust(
        left=0.06, right=0.92 if units else 0.99, top=1 - 0.5 / fig.get_figheight(), bottom=0.02
    )
    return save_figure_atomic(fig, out_path)


def plot_scale(
    value: float,
    out_path: Path,
    *,
    flag: float,
    reference: float = 1.0,
    label: str = "",
    flag_text: str = "flagged",
    reference_text: str = "reference",
) -> Path:
    """One number on a horizontal scale with its flag threshold (e.g. the streaking index).

    Parameters
    ----------
    value : float
        The number shown (a marker and its value).
    out_path : Path
        Destination (``.png`` / ``.svg``), written atomically.
    flag : float
        Threshold above which the value is flagged (the range above it is shaded red).
    reference : float, default 1.0
        A reference value drawn as a dotted line (e.g. 1: isotropic).
    label : str, default ""
        Axis label.
    flag_text, reference_text : str
        Legends of the shaded range and of the reference line.

    Returns
    -------
    Path
        ``out_path``.
    """
    value = float(value)
    top = max(2.0 * flag, 1.15 * value if np.isfinite(value) else 0.0, reference * 1.5)
    fig = plt.figure(figsize=(6.4, 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.axvspan(flag, top, color="#f4a582", alpha=0.6, label=f"{flag_text} (> {flag:g})")
    ax.axvline(reference, color="#555555", ls=":", lw=1.0, label=reference_text)
    flagged = np.isfinite(value) and value > flag
    colour = "#b2182b" if flagged else "#2166ac"
    if np.isfinite(value):
        ax.plot([value], [0.5], marker="v", ms=12, color=colour)
        ax.annotate(
            f"{value:.2f}", (value, 0.5), xytext=(0, 9), textcoords="offset points",
            ha="center", fontsize=10, color=colour,
        )  # fmt: skip
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, 1.2)
    ax.set_yticks([])
    if label:
        ax.set_xlabel(label, fontsize=9)
    ax.legend(loc="upper left", fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return save_figure_atomic(fig, out_path)


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _template_images(resolution: int) -> tuple[Any, Any]:
    """nilearn's MNI152 2009a symmetric brain mask and white-matter probability map."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_wm_template

    return (
        load_mni152_brain_mask(resolution=resolution),
        load_mni152_wm_template(resolution=resolution),
    )


def template_outlines(chimap_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The template's brain mask and white matter (p > 0.5) on the grid of a normalised map.

    Parameters
    ----------
    chimap_path : Path
        An image in ``MNI152NLin2009aSym`` space (any grid).

    Returns
    -------
    brain, white_matter : ndarray of bool
        In the RAS+ voxel order of :func:`load_ras` applied to ``chimap_path``.
    """
    from nilearn.image import resample_to_img

    target = nb.as_closest_canonical(nb.load(str(chimap_path)))
    if target.ndim > 3:
        target = target.slicer[..., 0]
    zooms = target.header.get_zooms()[:3]
    resolution = 1 if min(zooms) < 1.5 else 2
    brain, wm = _template_images(resolution)
    out = []
    for img in (brain, wm):
        res = resample_to_img(
            img,
            target,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
        out.append(np.asanyarray(res.dataobj) > 0.5)
    return out[0], out[1]


def plot_registration(
    chimap_mni: Path,
    out_path: Path,
    *,
    window_ppm: float = 0.15,
    cut_mm: tuple[float, float, float] = (-22.0, -12.0, 2.0),
) -> Path:
    """A normalised susceptibility map under the template's outlines (registration check).

    Parameters
    ----------
    chimap_mni : Path
        ``*_space-MNI152NLin2009aSym_Chimap.nii.gz`` (ppm).
    out_path : Path
        Destination figure (``.png`` / ``.svg``).
    window_ppm : float, default 0.15
        Grey-scale window ``-window_ppm .. window_ppm`` (ppm).
    cut_mm : tuple of 3 float, default (-22.0, -12.0, 2.0)
        MNI coordinates (mm) of the sagittal, coronal and axial slices: through the left
        putamen and pallidum, the thalami and the basal ganglia.

    Returns
    -------
    Path
        ``out_path``.
    """
    data, voxel_mm, affine = load_ras(chimap_mni)
    brain, wm = template_outlines(chimap_mni)
    ijk = np.linalg.solve(affine, np.array([*cut_mm, 1.0]))[:3]
    cut = tuple(
        int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(ijk, data.shape, strict=True)
    )
    return plot_orthogonal(
        data,
        voxel_mm,
        out_path,
        cut=cut,
        crop=bounding_box(brain, data.shape),
        cmap="gray",
        vmin=-window_ppm,
        vmax=window_ppm,
        units="ppm",
        title=f"susceptibility in {TEMPLATE_SPACE} with the template's outlines",
        contours=[
            (brain, "template brain", "#ff3030", "solid"),
            (wm, "template white matter", "#30c0ff", "solid"),
        ],
    )


# --------------------------------------------------------------------------------------
# Group figure
# --------------------------------------------------------------------------------------


def plot_region_distribution(
    values: Mapping[str, Sequence[float]],
    out_path: Path,
    *,
    highlight: Sequence[str] = (),
    xlabel: str = "mean susceptibility (ppm)",
    title: str = "",
) -> Path:
    """One horizontal box plot per region with every individual value as a dot.

    Parameters
    ----------
    values : mapping of str to sequence of float
        Region name -> one value per participant/run (NaN values are left out); drawn top
        to bottom in the mapping's order.
    out_path : Path
        Destination figure (``.png`` / ``.svg``).
    highlight : sequence of str, default ()
        Regions drawn in a stronger colour (e.g. the deep grey matter).
    xlabel : str, default "mean susceptibility (ppm)"
        Axis label.
    title : str, default ""
        Figure title.

    Returns
    -------
    Path
        ``out_path``.
    """
    names = list(values)
    clean = [np.asarray([v for v in values[r] if np.isfinite(v)], dtype=float) for r in names]
    n = max(len(names), 1)
    fig = plt.figure(figsize=(8.0, 1.3 + 0.24 * n))
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(n)[::-1][: len(names)]
    keep = [k for k, v in enumerate(clean) if v.size]
    if keep:
        box = ax.boxplot(
            [clean[k] for k in keep],
            positions=[ypos[k] for k in keep],
            orientation="horizontal",
            widths=0.6,
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "#b2182b", "linewidth": 1.5},
        )
        hl = set(highlight)
        for k, patch in zip(keep, box["boxes"], strict=True):
            patch.set_facecolor("#f4a582" if names[k] in hl else "#d9d9d9")
            patch.set_edgecolor("#444444")
        rng = np.random.default_rng(0)
        for k in keep:
            jitter = rng.uniform(-0.18, 0.18, clean[k].size)
            ax.plot(clean[k], ypos[k] + jitter, "o", ms=3, color="#2166ac", alpha=0.8)
    ax.axvline(0.0, color="#888888", lw=0.8, ls=":")
    ax.set_yticks(ypos)
    ax.set_yticklabels([f"{r} (n={c.size})" for r, c in zip(names, clean, strict=True)], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, out_path)
