"""Registration of a GRE magnitude (optionally via a T1w) to the MNI152 template with ANTs.

Runs ``antsRegistration`` in-process through antspyx (no ANTs binaries needed): a
centre-of-mass initialisation, then rigid, affine and SyN stages (Avants et al., Med Image
Anal 2008), all driven by Mattes mutual information (Mattes et al., IEEE TMI 2003), which
copes with the different contrast of a T2*-weighted magnitude and a T1 template. Multi-
resolution schedules (shrink factors 8-4-2-1) put most iterations on coarse grids and only a
few on the full-resolution grid, so a 1 mm registration takes about a minute on two cores.

Determinism: the metric's sampling is seeded (``--random-seed``) and the number of ITK threads
is fixed (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``); the same inputs, seed and thread count
give identical transforms.

Transforms are ANTs files (``*GenericAffine.mat`` and ``*Warp.nii.gz`` / ``*InverseWarp.nii.gz``)
listed in antsApplyTransforms order (the last listed is applied to the image first), with a
flag per file telling whether to invert it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

ImageLike = nib.Nifti1Image | str | os.PathLike


@dataclass(frozen=True)
class RegistrationResult:
    """Transform files of a subject <-> template registration.

    Attributes
    ----------
    to_template : tuple of str
        Files mapping a subject (GRE space) image into template space, in antsApplyTransforms
        order (``transformlist``).
    to_template_invert : tuple of bool
        ``whichtoinvert`` for ``to_template``.
    to_subject : tuple of str
        Files mapping a template-space image (an atlas) into subject space.
    to_subject_invert : tuple of bool
        ``whichtoinvert`` for ``to_subject``.
    parameters : dict
        Every setting of the registration (stages, iterations, seed, threads, versions).
    elapsed_s : float
        Wall time of the registration (s).
    """

    to_template: tuple[str, ...]
    to_template_invert: tuple[bool, ...]
    to_subject: tuple[str, ...]
    to_subject_invert: tuple[bool, ...]
    parameters: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def files(self) -> tuple[str, ...]:
        """Every transform file, without duplicates, in a stable order."""
        return tuple(dict.fromkeys((*self.to_template, *self.to_subject)))

    def to_json(self) -> str:
        """Serialise (for a JSON file in a nipype work directory)."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RegistrationResult:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        for key in ("to_template", "to_template_invert", "to_subject", "to_subject_invert"):
            d[key] = tuple(d[key])
        return cls(**d)

    def relocated(self, mapping: dict[str, str]) -> RegistrationResult:
        """The same result with its files renamed by ``mapping`` (old path -> new path)."""
        return RegistrationResult(
            to_template=tuple(mapping.get(f, f) for f in self.to_template),
            to_template_invert=self.to_template_invert,
            to_subject=tuple(mapping.get(f, f) for f in self.to_subject),
            to_subject_invert=self.to_subject_invert,
            parameters=dict(self.parameters),
            elapsed_s=self.elapsed_s,
        )


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _load(img: ImageLike) -> nib.Nifti1Image:
    return img if isinstance(img, nib.spatialimages.SpatialImage) else nib.load(str(img))


def _as_3d(img: ImageLike) -> nib.Nifti1Image:
    """A 3D float32 copy (4D echo stacks are averaged over echoes)."""
    img = _load(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data.mean(axis=3)
    return nib.Nifti1Image(np.nan_to_num(data), np.asarray(img.affine, dtype=np.float64))


def _save(img: nib.Nifti1Image, path: Path) -> str:
    out = nib.Nifti1Image(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.to_filename(str(path))
    return str(path)


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _antialias_to(img: nib.Nifti1Image, voxel_mm: float) -> nib.Nifti1Image:
    """Blur and resample an image whose voxels are finer than ``voxel_mm`` (mm) to that size.

    A Gaussian of FWHM sqrt(voxel_mm^2 - v^2) along each axis of voxel size v < voxel_mm,
    then linear resampling onto a grid of the same orientation and extent with voxel size
    max(v, voxel_mm). A fine (e.g. 1 mm) image registered to a coarser template grid is
    otherwise sampled without anti-aliasing at the finest level of the registration.
    """
    vs = _voxel_sizes(img.affine)
    target = float(voxel_mm)
    if np.all(vs >= 0.95 * target):
        return img
    data = np.asarray(img.dataobj, dtype=np.float32)
    sigma = np.sqrt(np.maximum(target**2 - vs**2, 0.0)) / 2.3548 / vs  # voxels
    data = ndimage.gaussian_filter(data, sigma)
    new_vs = np.maximum(vs, target)
    scale = new_vs / vs
    shape = tuple(max(1, int(np.ceil(n / f))) for n, f in zip(data.shape, scale, strict=True))
    affine = np.asarray(img.affine, dtype=np.float64) @ np.diag([*scale, 1.0])
    # centre the new grid on the old field of view
    shift = ((np.array(data.shape) - 1) - (np.array(shape) - 1) * scale) / 2.0
    affine[:3, 3] = np.asarray(img.affine)[:3, :3] @ shift + np.asarray(img.affine)[:3, 3]
    out = ndimage.affine_transform(
        data, np.diag(scale), offset=shift, output_shape=shape, order=1, mode="constant"
    )
    return nib.Nifti1Image(out.astype(np.float32), affine)


def _xyz(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return "x".join(f"{v:g}" for v in values)


def _set_threads(threads: int) -> int:
    n = max(1, int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    return n


def _run_ants(args: list[str]) -> None:
    import ants

    status = ants.registration(args, None)
    if status not in (0, None):
        raise RuntimeError(f"antsRegistration failed with status {status}")


def _fix_zero_pixdim(path: str) -> str:
    """Give the non-spatial axes of an ANTs warp file (``X x Y x Z x 1 x 3``, vector
    intent) a step of 1 instead of 0 (``pixdim[4:]``): a zero step reads as a 0-sized voxel
    (the BIDS validator's NIFTI_PIXDIM). Only those header fields change; the gzip header
    gets no file name and a zero time stamp. ITK does not read these steps for a
    displacement field. Returns ``path``."""
    import gzip
    import io

    raw = gzip.decompress(Path(path).read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    ndim = int(hdr["dim"][0])
    pixdim = hdr["pixdim"].copy()
    steps = pixdim[4 : ndim + 1]
    if not (steps <= 0).any():
        return path
    pixdim[4 : ndim + 1] = np.where(steps > 0, steps, 1.0)
    hdr["pixdim"] = pixdim
    block = hdr.binaryblock
    data = gzip.compress(block + raw[len(block) :], compresslevel=6, mtime=0)
    Path(path).write_bytes(data)
    return path


def _stage_args(
    kind: str,
    fixed: str,
    moving: str,
    *,
    bins: int,
    sampling_rate: float,
    iterations: tuple[int, ...],
    shrink: tuple[int, ...],
    smoothing: tuple[float, ...],
    transform_args: str,
    masks: str,
) -> list[str]:
    if not len(iterations) == len(shrink) == len(smoothing):
        raise ValueError("iterations, shrink factors and smoothing sigmas differ in length")
    if kind == "SyN":
        metric = f"Mattes[{fixed},{moving},1,{bins}]"  # dense sampling for the warp
        convergence = f"[{_xyz(iterations)},1e-6,10]"
    else:
        metric = f"Mattes[{fixed},{moving},1,{bins},Regular,{sampling_rate:g}]"
        convergence = f"[{_xyz(iterations)},1e-6,10]"
    return [
        "--metric", metric,
        "--transform", f"{kind}[{transform_args}]",
        "--convergence", convergence,
        "--shrink-factors", _xyz(shrink),
        "--smoothing-sigmas", _xyz(smoothing) + "vox",
        "--masks", masks,
    ]  # fmt: skip


def _register(
    fixed: str,
    moving: str,
    prefix: str,
    *,
    seed: int,
    stages: list[list[str]],
) -> None:
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "0",
        "--output", f"[{prefix}]",
        "--interpolation", "Linear",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--use-histogram-matching", "0",
        "--initial-moving-transform", f"[{fixed},{moving},1]",  # centre of mass
        "--random-seed", str(int(seed)),
    ]  # fmt: skip
    for st in stages:
        args += st
    _run_ants(args)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def register_to_template(
    moving_magnitude_img: ImageLike,
    template_img: ImageLike,
    *,
    out_dir: str | os.PathLike,
    brain_mask: ImageLike | None = None,
    template_mask: ImageLike | None = None,
    t1w: ImageLike | None = None,
    seed: int = 1234,
    threads: int = 1,
    mi_bins: int = 32,
    sampling_rate: float = 0.25,
    linear_iterations: tuple[int, ...] = (400, 200, 100, 10),
    linear_shrink_factors: tuple[int, ...] = (8, 4, 2, 1),
    linear_smoothing_vox: tuple[float, ...] = (3.0, 2.0, 1.0, 0.0),
    syn_iterations: tuple[int, ...] = (80, 50, 25, 5),
    syn_shrink_factors: tuple[int, ...] = (8, 4, 2, 1),
    syn_smoothing_vox: tuple[float, ...] = (3.0, 2.0, 1.0, 0.0),
    syn_gradient_step: float = 0.1,
    syn_flow_sigma: float = 3.0,
    syn_total_sigma: float = 0.0,
) -> RegistrationResult:
    """Register a GRE magnitude (or a T1w acquired with it) to a template: rigid + affine + SyN.

    Follows the standard ANTs recipe (Avants et al., NeuroImage 2011, "A reproducible
    evaluation of ANTs similarity metric performance"): centre-of-mass initialisation, then
    rigid, affine and symmetric normalisation (SyN; Avants et al., Med Image Anal 2008)
    stages, each multi-resolution, all with Mattes mutual information.

    Parameters
    ----------
    moving_magnitude_img : nibabel image or path
        GRE magnitude (arbitrary units) in subject space; a 4D echo stack is averaged over
        echoes.
    template_img : nibabel image or path
        Fixed image, e.g. :func:`qsm_bids.registration.template.load_template`; its grid
        defines the SyN warp's grid and the cost. A 2 mm template is enough for 1 mm data
        (the warp is smooth; about 20-30 s of CPU time on the phantom, against over 300 s
        for the 1 mm template, which also fitted small nuclei worse).
    out_dir : path
        Folder for the transform files (created).
    brain_mask : nibabel image or path or None, default None
        Subject brain mask on the magnitude's grid; the magnitude is skull-stripped with it
        (the template is skull-stripped). ``None``: the magnitude is used as is.
    template_mask : nibabel image or path or None, default None
        Template brain mask, restricting the metric of the SyN stage in template space.
    t1w : nibabel image or path or None, default None
        A T1w image of the same session. When given: T1w -> GRE rigid (mutual information,
        inside the dilated GRE brain mask), T1w (skull-stripped with the GRE mask carried
        over) -> template, and the two are composed.
    seed : int, default 1234
        Seed of the metric sampling (``--random-seed``).
    threads : int, default 1
        ITK threads (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, which ITK reads on its first
        multi-threaded call in a process); results are reproducible for a fixed thread count.
        Most of antsRegistration runs single-threaded at these image sizes.
    mi_bins : int, default 32
        Histogram bins of the Mattes mutual information.
    sampling_rate : float, default 0.25
        Fraction of voxels sampled (regular grid, seeded jitter) by the linear stages.
    linear_iterations : tuple of int, default (400, 200, 100, 10)
        Maximum iterations per level of the rigid and affine stages (each stops early at a
        convergence threshold of 1e-6 over 10 iterations).
    linear_shrink_factors : tuple of int, default (8, 4, 2, 1)
        Downsampling factor per level of the linear stages.
    linear_smoothing_vox : tuple of float, default (3.0, 2.0, 1.0, 0.0)
        Gaussian smoothing sigma (voxels) per level of the linear stages.
    syn_iterations : tuple of int, default (80, 50, 25, 5)
        Maximum iterations per level of the SyN stage.
    syn_shrink_factors : tuple of int, default (8, 4, 2, 1)
        Downsampling factor per level of the SyN stage.
    syn_smoothing_vox : tuple of float, default (3.0, 2.0, 1.0, 0.0)
        Smoothing sigma (voxels) per level of the SyN stage.
    syn_gradient_step : float, default 0.1
        SyN gradient step.
    syn_flow_sigma : float, default 3.0
        SyN update-field smoothing (voxels).
    syn_total_sigma : float, default 0.0
        SyN total-field smoothing (voxels).

    Returns
    -------
    RegistrationResult
        Paths of the transforms (subject -> template and template -> subject, with their
        inversion flags), the parameters and the wall time.
    """
    n_threads = _set_threads(threads)
    import ants

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gre = _as_3d(moving_magnitude_img)
    tpl = _as_3d(template_img)
    mask = None if brain_mask is None else _as_3d(brain_mask)
    lin = {
        "bins": mi_bins,
        "sampling_rate": sampling_rate,
        "iterations": tuple(linear_iterations),
        "shrink": tuple(linear_shrink_factors),
        "smoothing": tuple(linear_smoothing_vox),
    }
    syn = {
        "bins": mi_bins,
        "sampling_rate": 1.0,
        "iterations": tuple(syn_iterations),
        "shrink": tuple(syn_shrink_factors),
        "smoothing": tuple(syn_smoothing_vox),
        "transform_args": f"{syn_gradient_step:g},{syn_flow_sigma:g},{syn_total_sigma:g}",
    }
    with tempfile.TemporaryDirectory(prefix="qsm_reg_") as tmp_dir:
        tmp = Path(tmp_dir)
        fixed = _save(tpl, tmp / "template.nii")
        fixed_mask = "NA"
        if template_mask is not None:
            tmask = _as_3d(template_mask)
            dil = ndimage.binary_dilation(np.asarray(tmask.dataobj) > 0, iterations=2)
            fixed_mask = _save(nib.Nifti1Image(dil.astype(np.uint8), tmask.affine), tmp / "tm.nii")

        gre_data = np.asarray(gre.dataobj, dtype=np.float32)
        mask_data = None if mask is None else np.asarray(mask.dataobj) > 0
        stripped = gre_data if mask_data is None else np.where(mask_data, gre_data, 0.0)
        gre_stripped = _save(nib.Nifti1Image(stripped, gre.affine), tmp / "gre.nii")

        def to_template_stages(moving: str) -> list[list[str]]:
            return [
                _stage_args("Rigid", fixed, moving, transform_args="0.1", masks="[NA,NA]", **lin),
                _stage_args("Affine", fixed, moving, transform_args="0.1", masks="[NA,NA]", **lin),
                _stage_args("SyN", fixed, moving, masks=f"[{fixed_mask},NA]", **syn),
            ]

        if t1w is None:
            prefix = str(out / "gre_to_template_")
            _register(
                fixed, gre_stripped, prefix, seed=seed, stages=to_template_stages(gre_stripped)
            )
            affine_file = prefix + "0GenericAffine.mat"
            warp, inv_warp = prefix + "1Warp.nii.gz", prefix + "1InverseWarp.nii.gz"
            for f in (warp, inv_warp):
                _fix_zero_pixdim(f)
            to_template = (warp, affine_file)
            to_template_inv = (False, False)
            to_subject = (affine_file, inv_warp)
            to_subject_inv = (True, False)
        else:
            # (1) T1w -> GRE, rigid, mutual information, in the dilated GRE brain mask
            t1 = _as_3d(t1w)
            t1_file = _save(t1, tmp / "t1w.nii")
            gre_full = _save(gre, tmp / "gre_full.nii")
            gre_mask = "NA"
            if mask_data is not None:
                dil = ndimage.binary_dilation(mask_data, iterations=3).astype(np.uint8)
                gre_mask = _save(nib.Nifti1Image(dil, gre.affine), tmp / "gre_mask.nii")
            rigid_prefix = str(out / "t1w_to_gre_")
            _register(
                gre_full,
                t1_file,
                rigid_prefix,
                seed=seed,
                stages=[
                    _stage_args(
                        "Rigid", gre_full, t1_file, transform_args="0.1",
                        masks=f"[{gre_mask},NA]", **lin,
                    )
                ],
            )  # fmt: skip
            rigid = rigid_prefix + "0GenericAffine.mat"
            # (2) skull-strip the T1w with the GRE mask carried into T1w space (linear
            # interpolation of the mask, > 0.5: no staircase of the coarser GRE grid)
            t1_stripped = t1
            if mask_data is not None:
                m_img = ants.image_read(
                    _save(nib.Nifti1Image(mask_data.astype(np.float32), gre.affine), tmp / "m.nii")
                )
                t1_ants = ants.image_read(t1_file)
                m_t1 = ants.apply_transforms(
                    t1_ants, m_img, [rigid], whichtoinvert=[True], interpolator="linear"
                ).numpy() > 0.5  # fmt: skip
                t1_data = np.asarray(t1.dataobj, dtype=np.float32)
                t1_stripped = nib.Nifti1Image(np.where(m_t1, t1_data, 0.0), t1.affine)
            # (3) a T1w finer than the template grid is anti-aliased to the template's voxel
            # size (else the finest level samples a 1 mm image on a 2 mm grid unsmoothed)
            tpl_vox = float(np.min(_voxel_sizes(tpl.affine)))
            t1_moving = _save(_antialias_to(t1_stripped, tpl_vox), tmp / "t1s.nii")
            # (4) T1w -> template, then compose
            prefix = str(out / "t1w_to_template_")
            _register(fixed, t1_moving, prefix, seed=seed, stages=to_template_stages(t1_moving))
            affine_file = prefix + "0GenericAffine.mat"
            warp, inv_warp = prefix + "1Warp.nii.gz", prefix + "1InverseWarp.nii.gz"
            for f in (warp, inv_warp):
                _fix_zero_pixdim(f)
            to_template = (warp, affine_file, rigid)
            to_template_inv = (False, False, True)
            to_subject = (rigid, affine_file, inv_warp)
            to_subject_inv = (False, True, False)

    parameters: dict[str, Any] = {
        "Software": f"ANTs antsRegistration via antspyx {ants.__version__}",
        "Initialisation": "centre of mass",
        "Stages": ["Rigid", "Affine", "SyN"],
        "Metric": f"Mattes mutual information, {mi_bins} bins",
        "LinearSamplingRate": sampling_rate,
        "LinearIterations": list(linear_iterations),
        "LinearShrinkFactors": list(linear_shrink_factors),
        "LinearSmoothingSigmasVoxels": list(linear_smoothing_vox),
        "SyNIterations": list(syn_iterations),
        "SyNShrinkFactors": list(syn_shrink_factors),
        "SyNSmoothingSigmasVoxels": list(syn_smoothing_vox),
        "SyNParameters": [syn_gradient_step, syn_flow_sigma, syn_total_sigma],
        "RandomSeed": int(seed),
        "Threads": n_threads,
        "SkullStrippedWithBrainMask": brain_mask is not None,
        "ViaT1w": t1w is not None,
    }
    if t1w is not None:
        parameters["T1wToGRE"] = (
            "Rigid, Mattes mutual information, GRE (fixed, with skull) brain mask dilated by "
            "3 voxels"
            if brain_mask is not None
            else "Rigid, Mattes mutual information"
        )
        parameters["T1wAntialiasedToMM"] = tpl_vox
        parameters["Stages"] = ["Rigid (T1w to GRE)", "Rigid", "Affine", "SyN"]
    return RegistrationResult(
        to_template=to_template,
        to_template_invert=to_template_inv,
        to_subject=to_subject,
        to_subject_invert=to_subject_inv,
        parameters=parameters,
        elapsed_s=time.perf_counter() - t0,
    )


def _apply(
    moving: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    transforms: tuple[str, ...],
    invert: tuple[bool, ...],
    interpolator: str,
    threads: int,
) -> np.ndarray:
    _set_threads(threads)
    import ants

    with tempfile.TemporaryDirectory(prefix="qsm_xfm_") as tmp_dir:
        tmp = Path(tmp_dir)
        ref = ants.image_read(_save(reference, tmp / "ref.nii"))
        mov = ants.image_read(_save(moving, tmp / "mov.nii"))
        res = ants.apply_transforms(
            ref,
            mov,
            list(transforms),
            interpolator=interpolator,
            whichtoinvert=list(invert),
            defaultvalue=0,
        )
        # ITK keeps the NIfTI voxel order, so the array lies on the reference's grid
        return np.asarray(res.numpy())


def to_template_space(
    subject_img: ImageLike,
    template_img: ImageLike,
    result: RegistrationResult,
    *,
    interpolation: str = "linear",
    threads: int = 1,
) -> nib.Nifti1Image:
    """Resample a subject-space map (e.g. chi, ppm) into template space.

    Parameters
    ----------
    subject_img : nibabel image or path
        3D map on the grid of the registered magnitude.
    template_img : nibabel image or path
        Defines the output grid (normally the registration's template).
    result : RegistrationResult
        From :func:`register_to_template`.
    interpolation : str, default "linear"
        ANTs interpolator ("linear", "nearestNeighbor", "bSpline", ...).
    threads : int, default 1
        ITK threads.

    Returns
    -------
    nibabel.Nifti1Image
        float32 map on the template grid (0 where the subject had no data).
    """
    tpl = _as_3d(template_img)
    data = _apply(
        _as_3d(subject_img),
        tpl,
        result.to_template,
        result.to_template_invert,
        interpolation,
        threads,
    )
    return nib.Nifti1Image(data.astype(np.float32), tpl.affine)


def to_subject_space(
    template_space_img: ImageLike,
    subject_img: ImageLike,
    result: RegistrationResult,
    *,
    interpolation: str = "linear",
    threads: int = 1,
) -> nib.Nifti1Image:
    """Resample a template-space image (e.g. the template brain mask) onto the subject's grid.

    The counterpart of :func:`to_template_space` (the ``to_subject`` transforms of
    ``result``), for continuous images; labels go through :func:`atlas_to_subject`.

    Parameters
    ----------
    template_space_img : nibabel image or path
        3D image in template space (any grid).
    subject_img : nibabel image or path
        Defines the output grid (the magnitude, mask or chi of the run).
    result : RegistrationResult
        From :func:`register_to_template`.
    interpolation : str, default "linear"
        ANTs interpolator.
    threads : int, default 1
        ITK threads.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the subject's grid (0 outside the template image).
    """
    subj = _as_3d(subject_img)
    data = _apply(
        _as_3d(template_space_img),
        subj,
        result.to_subject,
        result.to_subject_invert,
        interpolation,
        threads,
    )
    return nib.Nifti1Image(data.astype(np.float32), subj.affine)


def atlas_to_subject(
    atlas_img: ImageLike,
    subject_img: ImageLike,
    result: RegistrationResult,
    *,
    interpolation: str = "genericLabel",
    threads: int = 1,
) -> nib.Nifti1Image:
    """Map a template-space label image (atlas) onto the subject's grid.

    By default uses ANTs' ``genericLabel`` interpolator (each label's indicator interpolated
    linearly, the strongest wins), which gives smoother boundaries than nearest neighbour
    but costs time in proportion to the number of labels (about 10-15 s of CPU time for the
    170 AAL3 labels on a 1 mm grid).

    Parameters
    ----------
    atlas_img : nibabel image or path
        Integer labels in template space (any grid, e.g. AAL3 at 1 mm).
    subject_img : nibabel image or path
        Defines the output grid (the magnitude or chi of the run).
    result : RegistrationResult
        From :func:`register_to_template`.
    interpolation : str, default "genericLabel"
        ANTs label interpolator: "genericLabel" or "nearestNeighbor" (fast).
    threads : int, default 1
        ITK threads.

    Returns
    -------
    nibabel.Nifti1Image
        int16 labels on the subject's grid with the subject's affine.
    """
    atlas = _load(atlas_img)
    labels = np.asarray(atlas.dataobj).astype(np.float32)
    subj = _as_3d(subject_img)
    data = _apply(
        nib.Nifti1Image(labels, np.asarray(atlas.affine, dtype=np.float64)),
        subj,
        result.to_subject,
        result.to_subject_invert,
        interpolation,
        threads,
    )
    return nib.Nifti1Image(np.rint(data).astype(np.int16), subj.affine)
