"""The MNI152 template that ships with nilearn (no download).

nilearn's wheel contains ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``: the ICBM 2009a
*nonlinear symmetric* T1 average (Fonov et al., NeuroImage 2011), skull-stripped by nilearn,
on a 1 mm grid of 197 x 233 x 189 voxels whose world origin matches TemplateFlow's
``tpl-MNI152NLin2009aSym`` (first voxel at (-98, -134, -72) mm, RAS+). Its TemplateFlow name,
``MNI152NLin2009aSym``, is therefore the ``space-`` label of every template-space derivative.
Other resolutions are nilearn's own linear resampling of the 1 mm image (same origin, grid
spacing ``resolution`` mm); the brain mask is nilearn's (template > 0.2 after scaling the
template to [0, 1]), on the same grid as the template of that resolution.
"""

from __future__ import annotations

import functools
import warnings

import nibabel as nib
import numpy as np

#: ``space-`` label of the template (TemplateFlow identifier).
TEMPLATE_SPACE = "MNI152NLin2009aSym"
#: The file nilearn ships (for provenance in sidecars).
TEMPLATE_FILE = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: Template resolutions (mm) accepted by :func:`load_template`.
RESOLUTIONS_MM: tuple[int, ...] = (1, 2, 3)


def _check_resolution(resolution_mm: float) -> int:
    res = int(round(float(resolution_mm)))
    if res not in RESOLUTIONS_MM or not np.isclose(res, float(resolution_mm)):
        raise ValueError(
            f"template resolution must be one of {RESOLUTIONS_MM} mm, not {resolution_mm}"
        )
    return res


def _as_float_image(img: nib.Nifti1Image, dtype: type) -> nib.Nifti1Image:
    data = np.asarray(img.get_fdata(dtype=np.float32)).astype(dtype)
    out = nib.Nifti1Image(data, np.asarray(img.affine, dtype=np.float64))
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(out.affine, code=4)  # 4: MNI152 space
    out.set_sform(out.affine, code=4)
    return out


@functools.lru_cache(maxsize=4)
def load_template(resolution_mm: float = 1.0) -> nib.Nifti1Image:
    """The skull-stripped MNI152 ICBM 2009a nonlinear symmetric T1 template.

    Parameters
    ----------
    resolution_mm : float, default 1.0
        Isotropic voxel size (mm): 1, 2 or 3. The 1 mm grid is 197 x 233 x 189 voxels.

    Returns
    -------
    nibabel.Nifti1Image
        float32 T1 intensities scaled to [0, 1] (zero outside the brain), RAS+ affine in
        MNI152NLin2009aSym millimetres (sform/qform code 4). Cached: do not modify it.

    Raises
    ------
    ValueError
        If ``resolution_mm`` is not 1, 2 or 3.
    """
    import nilearn.datasets as nd

    res = _check_resolution(resolution_mm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = nd.load_mni152_template(resolution=res)
    return _as_float_image(img, np.float32)


@functools.lru_cache(maxsize=4)
def load_template_mask(resolution_mm: float = 1.0) -> nib.Nifti1Image:
    """Brain mask of :func:`load_template` on the same grid.

    Parameters
    ----------
    resolution_mm : float, default 1.0
        Isotropic voxel size (mm): 1, 2 or 3.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (1 inside the brain), same affine and shape as ``load_template``.
    """
    import nilearn.datasets as nd

    res = _check_resolution(resolution_mm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = nd.load_mni152_brain_mask(resolution=res)
    return _as_float_image(img, np.uint8)
