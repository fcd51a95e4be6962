"""The QC figure of each stage (a "reportlet", as niworkflows calls them), and their names.

Each function draws one figure from NIfTI files and writes it atomically to
``<output_dir>/sub-<label>/figures/<run prefix>_desc-<what>_qc.png`` (:func:`figure_path`).
They are called by the reportlet nodes during a run
(:mod:`qsm_bids.interfaces.reportlets`, from the work directory's intermediate files) and
by the report for outputs that have no reportlets (from the derivatives), so both give the
same figure. :data:`FIGURES` lists them in pipeline order with their titles and captions.

All slice figures of a run cut through the same voxel (the brain mask's centre of mass,
20 mm to the subject's left) and show the mask's bounding box (:func:`slice_view`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsm_bids.core.streaking import STREAKING_FLAG
from qsm_bids.report import figures as fg

#: Suffix of every reportlet (``<prefix>_desc-<what>_qc.png``).
FIGURE_SUFFIX = "qc"
#: Extensions a reportlet may have (the first is what qsm_bids writes).
FIGURE_EXTENSIONS: tuple[str, ...] = (".png", ".svg")
#: Display window of the susceptibility maps (ppm, symmetric).
QSM_WINDOW_PPM = 0.15
#: Outline colour of the reference region.
REFERENCE_CONTOUR = ("reference region", "#30ff60", "solid")


@dataclass(frozen=True)
class FigureSpec:
    """What a reportlet shows.

    Attributes
    ----------
    stage : str
        The pipeline stage that makes it (a key of the sidecars' ``Stages``).
    title : str
        Heading in the report.
    caption : str
        What to look for (plain text).
    """

    stage: str
    title: str
    caption: str


#: ``desc`` label -> what the reportlet shows, in pipeline order. User segmentations add
#: ``seg<name>`` figures after ``atlas``.
FIGURES: dict[str, FigureSpec] = {
    "brainmask": FigureSpec(
        "mask",
        "Brain mask",
        "First-echo magnitude (or phase, without magnitude images) with the brain-mask "
        "outline (red): the mask should cover the brain and exclude the skull and scalp.",
    ),
    "unwrapped": FigureSpec(
        "unwrap",
        "Unwrapped phase, per echo",
        "Spatially and temporally unwrapped phase (rad) of every echo, one row per echo, "
        "inside the brain mask: smooth, without wraps or jumps; the phase grows with echo "
        "time.",
    ),
    "totalfield": FigureSpec(
        "combine",
        "Total field",
        "Total field map (Hz) after unwrapping and echo combination: smooth, without phase "
        "wraps or jumps inside the mask.",
    ),
    "echofit": FigureSpec(
        "combine",
        "Echo-fit noise",
        "Standard deviation of the total field (Hz) from the fit across echoes: low inside "
        "the brain; high values mark unreliable phase (near sinuses, veins, the mask edge).",
    ),
    "localfield": FigureSpec(
        "background",
        "Local field",
        "Local (tissue) field map (Hz) after background-field removal: no residual "
        "large-scale gradients; the dashed yellow outline is the region it is defined in.",
    ),
    "chimap": FigureSpec(
        "inversion",
        "Susceptibility map",
        f"Susceptibility map (ppm, window +/-{QSM_WINDOW_PPM} ppm) with the brain (red) and "
        "background-removal (dashed yellow) outlines. Deep grey nuclei and veins should be "
        "bright (paramagnetic); look for streaks and rim artefacts.",
    ),
    "reference": FigureSpec(
        "reference",
        "Reference region",
        "The region whose mean susceptibility is set to zero (green outline) over the "
        "referenced map.",
    ),
    "streaking": FigureSpec(
        "inversion",
        "Streaking index",
        "k-space power of the map on the dipole cone over the power off it: about 1 is "
        f"isotropic, above {STREAKING_FLAG:g} suggests streaking along the cone, below 1 a "
        "suppressed cone (strong regularisation).",
    ),
    "r2star": FigureSpec("r2star", "R2*", "R2* map (1/s) with the brain-mask outline."),
    "swi": FigureSpec(
        "swi",
        "SWI",
        "Susceptibility-weighted image (CLEAR-SWI style: echo-time-weighted magnitude times a "
        "phase mask from the local field): veins should be dark.",
    ),
    "minip": FigureSpec(
        "swi",
        "SWI minIP",
        "Minimum-intensity projection of the SWI over a slab of a few mm along B0: veins "
        "should show as dark connected vessels.",
    ),
    "registration": FigureSpec(
        "registration",
        "Registration",
        f"The susceptibility map resampled to {fg.TEMPLATE_SPACE}, under the template's "
        "brain (red) and white-matter (blue) outlines: the outlines should follow the "
        "brain's edge and the deep grey nuclei.",
    ),
    "atlas": FigureSpec(
        "registration",
        "Atlas labels in subject space",
        "AAL3 labels, transformed to the subject, over the susceptibility map: they should "
        "sit on the deep grey nuclei.",
    ),
}

#: Caption of a user segmentation's figure (``seg<name>``).
SEGMENTATION_CAPTION = (
    "Your segmentation on the GRE grid (resampled by world coordinates, no registration) "
    "over the susceptibility map: it should sit on the structures it names; a shift means "
    "it is not in this session's scanner space."
)


def figure_path(output_dir: Path, prefix: str, desc: str, extension: str = ".png") -> Path:
    """Where the reportlet ``desc`` of a run lives.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives.
    prefix : str
        The run's entities, e.g. ``"sub-01_ses-1_run-1"``.
    desc : str
        A key of :data:`FIGURES` or ``seg<name>`` (alphanumeric).
    extension : str, default ".png"
        ``.png`` or ``.svg``.

    Returns
    -------
    Path
        ``<output_dir>/sub-<label>/figures/<prefix>_desc-<desc>_qc<extension>``.
    """
    if not desc.isalnum():
        raise ValueError(f"a reportlet's desc must be alphanumeric, got {desc!r}")
    if extension not in FIGURE_EXTENSIONS:
        raise ValueError(f"reportlets are {FIGURE_EXTENSIONS}, got {extension!r}")
    subject = prefix.split("_", 1)[0]
    if not subject.startswith("sub-"):
        raise ValueError(f"a run prefix starts with sub-, got {prefix!r}")
    name = f"{prefix}_desc-{desc}_{FIGURE_SUFFIX}{extension}"
    return Path(output_dir) / subject / "figures" / name


def find_figure(output_dir: Path, prefix: str, desc: str) -> Path | None:
    """The reportlet ``desc`` of a run when it exists (PNG or SVG), else ``None``."""
    for ext in FIGURE_EXTENSIONS:
        path = figure_path(output_dir, prefix, desc, ext)
        if path.is_file():
            return path
    return None


# --------------------------------------------------------------------------------------
# Shared view of a run
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceView:
    """Where a run's slice figures cut and what they show (RAS+ voxel indices)."""

    cut: tuple[int, int, int] | None
    crop: tuple[slice, slice, slice] | None
    wide: tuple[slice, slice, slice] | None


def slice_view(mask: np.ndarray | None, voxel_mm: Sequence[float]) -> SliceView:
    """The cut (mask's centre of mass, 20 mm to the left), the crop (mask's box + 4 voxels)
    and the wide crop (+ 20 mm, for the magnitude) of a RAS+ mask; whole grid without one."""
    if mask is None:
        return SliceView(None, None, None)
    shape = mask.shape[:3]
    return SliceView(
        fg.center_of(mask, shape, voxel_mm=voxel_mm, sagittal_offset_mm=-20.0),
        fg.bounding_box(mask, shape, margin=4),
        fg.bounding_box(mask, shape, margin=[int(np.ceil(20 / v)) for v in voxel_mm]),
    )


def _mask(path: Path | str | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if path is None:
        return None
    data = fg.load_ras(Path(path))[0] > 0
    return data if data.shape == shape else None


def _contours(brain, local=None) -> list:
    out = [(brain, *fg.BRAIN_CONTOUR)] if brain is not None else []
    return out + ([(local, *fg.LOCAL_CONTOUR)] if local is not None else [])


# --------------------------------------------------------------------------------------
# One function per figure
# --------------------------------------------------------------------------------------


def brainmask_figure(
    out_path: Path, mask: Path, *, magnitude: Path | None = None, phase: Path | None = None
) -> Path:
    """The brain mask's outline over the first-echo magnitude (else the first-echo phase).

    Parameters
    ----------
    out_path : Path
        Destination figure.
    mask : Path
        Brain mask (NIfTI).
    magnitude, phase : Path or None
        3D/4D magnitude (arbitrary units) or phase (rad) on the mask's grid; the first
        volume is shown. One of them is needed.
    """
    image = magnitude if magnitude is not None else phase
    if image is None:
        raise ValueError("the brain-mask figure needs the magnitude or the phase")
    data, vox, _ = fg.load_ras(Path(image))
    brain = _mask(mask, data.shape)
    view = slice_view(brain, vox)
    if magnitude is not None:
        lo, hi = 0.0, fg.robust_window(data, brain, percentile=99.5)[1]
        title, cmap = "first-echo magnitude", "gray"
    else:
        lo, hi = -np.pi, np.pi
        title, cmap = "first-echo phase (rad)", "gray"
    return fg.plot_orthogonal(
        data, vox, out_path, cut=view.cut, crop=view.wide, cmap=cmap, vmin=lo, vmax=hi,
        title=title, contours=_contours(brain),
    )  # fmt: skip


def unwrapped_figure(
    out_path: Path, unwrapped: Path, mask: Path, *, echo_times_s: Sequence[float] = ()
) -> Path:
    """Every echo's unwrapped phase (rad) inside the brain mask, one row per echo.

    Parameters
    ----------
    out_path : Path
        Destination figure.
    unwrapped : Path
        4D unwrapped phase (rad), echoes along the 4th axis.
    mask : Path
        Brain mask.
    echo_times_s : sequence of float, default ()
        Echo times (s), for the row labels.
    """
    data, vox, _ = fg.load_ras(Path(unwrapped), all_volumes=True)
    brain = _mask(mask, data.shape[:3])
    view = slice_view(brain, vox)
    rows = []
    for n in range(data.shape[3]):
        echo = data[..., n]
        lo, hi = fg.robust_window(echo, brain, percentile=99.0, symmetric=True)
        shown = np.where(brain, echo, np.nan) if brain is not None else echo
        te = f", {1000 * float(echo_times_s[n]):.1f} ms" if n < len(echo_times_s) else ""
        rows.append((f"echo {n + 1}{te}", shown, lo, hi))
    return fg.plot_rows(
        rows, vox, out_path, cut=view.cut, crop=view.crop, cmap="RdBu_r", units="rad",
        title="unwrapped phase per echo",
    )  # fmt: skip


def field_figure(
    out_path: Path,
    field: Path,
    mask: Path,
    *,
    local_mask: Path | None = None,
    title: str = "total field",
) -> Path:
    """A field map (Hz) inside its mask, symmetric window at the 99th percentile of |field|.

    Parameters
    ----------
    out_path : Path
        Destination figure.
    field : Path
        Field map (Hz).
    mask : Path
        Brain mask (outlined in red).
    local_mask : Path or None, default None
        Where a local field is defined (outlined dashed yellow; the map is shown there).
    title : str, default "total field"
        Figure title.
    """
    data, vox, _ = fg.load_ras(Path(field))
    brain = _mask(mask, data.shape)
    local = _mask(local_mask, data.shape)
    view = slice_view(brain, vox)
    use = local if local is not None else brain
    lo, hi = fg.robust_window(data, use, percentile=99.0, symmetric=True)
    shown = np.where(use, data, np.nan) if use is not None else data
    return fg.plot_orthogonal(
        shown, vox, out_path, cut=view.cut, crop=view.crop, cmap="RdBu_r", vmin=lo, vmax=hi,
        units="Hz", title=title, contours=_contours(brain, local),
    )  # fmt: skip


def noise_figure(out_path: Path, noise: Path, mask: Path) -> Path:
    """The echo fit's field standard deviation (Hz) inside the brain mask."""
    data, vox, _ = fg.load_ras(Path(noise))
    brain = _mask(mask, data.shape)
    view = slice_view(brain, vox)
    hi = fg.robust_window(data, brain, percentile=99.0)[1]
    shown = np.where(brain, data, np.nan) if brain is not None else data
    return fg.plot_orthogonal(
        shown, vox, out_path, cut=view.cut, crop=view.crop, cmap="magma", vmin=0.0,
        vmax=max(hi, 1e-6), units="Hz", title="echo-fit noise (SD of the field)",
        contours=_contours(brain),
    )  # fmt: skip


def chimap_figure(
    out_path: Path, chi: Path, mask: Path | None, *, local_mask: Path | None = None
) -> Path:
    """The susceptibility map (ppm, grey, +/- :data:`QSM_WINDOW_PPM`) with the outlines of the
    brain (``mask``) and of the background-removal mask (``local_mask``)."""
    data, vox, _ = fg.load_ras(Path(chi))
    brain = _mask(mask, data.shape)
    local = _mask(local_mask, data.shape)
    view = slice_view(brain if brain is not None else local, vox)
    return fg.plot_orthogonal(
        data, vox, out_path, cut=view.cut, crop=view.crop, cmap="gray", vmin=-QSM_WINDOW_PPM,
        vmax=QSM_WINDOW_PPM, units="ppm", title="susceptibility",
        contours=_contours(brain, local),
    )  # fmt: skip


def reference_figure(
    out_path: Path, chi: Path, region: Path, *, mask: Path | None = None, title: str = ""
) -> Path:
    """The reference region (green outline) over the referenced susceptibility map."""
    data, vox, _ = fg.load_ras(Path(chi))
    ref = _mask(region, data.shape)
    brain = _mask(mask, data.shape)
    view = slice_view(brain if brain is not None else ref, vox)
    # cut through the region when the mask's centre misses it (e.g. the ventricles)
    cut = view.cut
    if ref is not None and np.any(ref) and cut is not None:
        i, j, k = cut
        if not (ref[i].any() and ref[:, j].any() and ref[:, :, k].any()):
            cut = fg.center_of(ref, data.shape, voxel_mm=vox)
    contours = [(ref, *REFERENCE_CONTOUR)] if ref is not None else []
    return fg.plot_orthogonal(
        data, vox, out_path, cut=cut, crop=view.crop, cmap="gray", vmin=-QSM_WINDOW_PPM,
        vmax=QSM_WINDOW_PPM, units="ppm", title=title or "reference region",
        contours=contours,
    )  # fmt: skip


def labels_figure(
    out_path: Path, chi: Path, labels: Path, *, mask: Path | None = None, title: str
) -> Path:
    """A label image (atlas or segmentation, on the map's grid) over the susceptibility
    map; cut and crop from ``mask`` (else from the map's non-zero voxels)."""
    data, vox, _ = fg.load_ras(Path(chi))
    lab = fg.load_ras(Path(labels))[0]
    if lab.shape != data.shape:
        raise ValueError(f"{Path(labels).name}: grid {lab.shape} differs from the map's")
    lab_int = np.rint(lab).astype(np.int32)
    brain = _mask(mask, data.shape)
    if brain is None:
        brain = data != 0
    view = slice_view(brain if brain.any() else lab_int > 0, vox)
    return fg.plot_orthogonal(
        data, vox, out_path, cut=view.cut, crop=view.crop, cmap="gray", vmin=-QSM_WINDOW_PPM,
        vmax=QSM_WINDOW_PPM, units="ppm", title=title, labels=lab_int,
    )  # fmt: skip


def r2star_figure(out_path: Path, r2star: Path, mask: Path) -> Path:
    """The R2* map (1/s) with the brain-mask outline."""
    data, vox, _ = fg.load_ras(Path(r2star))
    brain = _mask(mask, data.shape)
    view = slice_view(brain, vox)
    hi = fg.robust_window(data, brain, percentile=99.0)[1]
    return fg.plot_orthogonal(
        data, vox, out_path, cut=view.cut, crop=view.crop, cmap="magma", vmin=0.0,
        vmax=max(hi, 1e-6), units="1/s", title="R2*", contours=_contours(brain),
    )  # fmt: skip


def swi_figure(out_path: Path, image: Path, mask: Path | None, title: str) -> Path:
    """The SWI or its minIP (grey, 0 to the 99th percentile in the brain), brain outline."""
    data, vox, _ = fg.load_ras(Path(image))
    brain = _mask(mask, data.shape)
    view = slice_view(brain, vox)
    hi = fg.robust_window(data, brain, percentile=99.0)[1]
    return fg.plot_orthogonal(
        data, vox, out_path, cut=view.cut, crop=view.crop, cmap="gray", vmin=0.0,
        vmax=max(hi, 1e-6), units="a.u.", title=title, contours=_contours(brain),
    )  # fmt: skip


def registration_figure(out_path: Path, chi_template: Path) -> Path:
    """The map in template space under the template's outlines
    (:func:`qsm_bids.report.figures.plot_registration`)."""
    return fg.plot_registration(Path(chi_template), out_path, window_ppm=QSM_WINDOW_PPM)


def streaking_figure(out_path: Path, value: float) -> Path:
    """The streaking index on a scale with its flag (:data:`STREAKING_FLAG`)."""
    return fg.plot_scale(
        value, out_path, flag=STREAKING_FLAG, reference=1.0,
        label="streaking index (power on the dipole cone / off it)",
        flag_text="suggests streaking", reference_text="isotropic (1)",
    )  # fmt: skip


__all__ = [
    "FIGURES",
    "FIGURE_EXTENSIONS",
    "FIGURE_SUFFIX",
    "QSM_WINDOW_PPM",
    "SEGMENTATION_CAPTION",
    "FigureSpec",
    "SliceView",
    "brainmask_figure",
    "chimap_figure",
    "field_figure",
    "figure_path",
    "find_figure",
    "labels_figure",
    "noise_figure",
    "r2star_figure",
    "swi_figure",
    "reference_figure",
    "registration_figure",
    "slice_view",
    "streaking_figure",
    "unwrapped_figure",
]
