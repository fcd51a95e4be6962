"""Regional susceptibility statistics: per atlas region, inside the brain mask, in subject space.

Following the reporting advice of the QSM consensus (ISMRM study group, MRM 2024,
doi:10.1002/mrm.30006), every table also carries a whole-brain row, so that a reader can see
what the regional values are relative to. Pure numpy: no files.
"""

from __future__ import annotations

import numpy as np

#: Label of the whole-brain row (all voxels of the mask, whatever their atlas label).
WHOLE_BRAIN_LABEL = 0
#: Region name of the whole-brain row.
WHOLE_BRAIN_NAME = "whole_brain"
#: Columns of a row, in table order.
COLUMNS: tuple[str, ...] = (
    "region",
    "label",
    "voxels",
    "volume_mm3",
    "mean_ppm",
    "median_ppm",
    "std_ppm",
    "p25_ppm",
    "p75_ppm",
)


def _row(name: str, label: int, values: np.ndarray, voxel_volume_mm3: float) -> dict:
    n = int(values.size)
    row: dict = {"region": name, "label": int(label), "voxels": n}
    row["volume_mm3"] = float(n * voxel_volume_mm3)
    if n == 0:
        nan = float("nan")
        row.update(mean_ppm=nan, median_ppm=nan, std_ppm=nan, p25_ppm=nan, p75_ppm=nan)
        return row
    v = values.astype(np.float64)
    p25, p50, p75 = np.percentile(v, (25.0, 50.0, 75.0))
    row["mean_ppm"] = float(v.mean())
    row["median_ppm"] = float(p50)
    row["std_ppm"] = float(v.std())
    row["p25_ppm"] = float(p25)
    row["p75_ppm"] = float(p75)
    return row


def region_statistics(
    chi: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    names: dict[int, str],
    voxel_volume_mm3: float,
) -> list[dict]:
    """Susceptibility statistics per labelled region inside a brain mask.

    Parameters
    ----------
    chi : float ndarray (X, Y, Z)
        Susceptibility map (ppm).
    labels : int ndarray (X, Y, Z)
        Atlas labels on the same grid (0 = no region); e.g. AAL3 mapped into subject space.
    mask : bool ndarray (X, Y, Z)
        Brain mask; only voxels inside it count (non-finite chi values are ignored too).
    names : dict[int, str]
        Label -> region name. One row per entry, in increasing label order, also for regions
        with no voxel in the mask (then ``voxels`` is 0 and the statistics are NaN); labels
        present in ``labels`` but absent from ``names`` are not reported separately.
    voxel_volume_mm3 : float
        Volume of one voxel (mm^3).

    Returns
    -------
    list of dict
        Rows with the keys of :data:`COLUMNS`: ``region`` (str), ``label`` (int),
        ``voxels`` (int), ``volume_mm3`` (float, mm^3), ``mean_ppm``, ``median_ppm``,
        ``std_ppm`` (population standard deviation, ddof = 0), ``p25_ppm``, ``p75_ppm``
        (25th/75th percentiles, linear interpolation), all in ppm. The first row is the
        whole brain: ``region`` ``"whole_brain"``, ``label`` 0 (0 is no atlas region, so it
        cannot collide with one), statistics over every finite voxel of ``mask``.

    Raises
    ------
    ValueError
        If the shapes differ, a name uses label 0, or ``voxel_volume_mm3`` is not positive.
    """
    chi = np.asarray(chi)
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if not (chi.shape == labels.shape == mask.shape):
        raise ValueError(
            f"chi {chi.shape}, labels {labels.shape} and mask {mask.shape} must share one shape"
        )
    if WHOLE_BRAIN_LABEL in names:
        raise ValueError(f"label {WHOLE_BRAIN_LABEL} is reserved for the whole-brain row")
    if not voxel_volume_mm3 > 0:
        raise ValueError("voxel_volume_mm3 must be positive")

    inside = mask & np.isfinite(chi)
    values = chi[inside]
    labs = labels[inside].astype(np.int64)
    rows = [_row(WHOLE_BRAIN_NAME, WHOLE_BRAIN_LABEL, values, voxel_volume_mm3)]
    # group the masked voxels by label once (sort), instead of one pass over the volume per label
    order = np.argsort(labs, kind="stable")
    labs, values = labs[order], values[order]
    keys = np.asarray(sorted(names), dtype=np.int64)
    start = np.searchsorted(labs, keys, side="left")
    stop = np.searchsorted(labs, keys, side="right")
    for key, a, b in zip(keys, start, stop, strict=True):
        rows.append(_row(names[int(key)], int(key), values[a:b], voxel_volume_mm3))
    return rows


def labels_to_grid(
    labels: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, ...],
) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto another voxel grid, by world
    coordinates (no registration: both grids must share one world space, e.g. the scanner
    coordinates of one session).

    Each target voxel centre is mapped to world coordinates (mm) with ``target_affine``, then
    into the source's voxel coordinates with the inverse of ``source_affine``, and takes the
    label of the nearest source voxel (interpolation order 0: labels are never mixed).
    Grids that differ by a permutation or flip of axes, or by an integer upsampling with
    voxel centres on the source's, are reproduced exactly.

    Parameters
    ----------
    labels : int ndarray (X, Y, Z)
        Label volume (0 = no region).
    source_affine : (4, 4) array
        Voxel-to-world affine (mm) of ``labels``.
    target_affine : (4, 4) array
        Voxel-to-world affine (mm) of the target grid.
    target_shape : tuple of int
        Shape of the target grid (the first three entries are used).

    Returns
    -------
    int32 ndarray
        Labels on the target grid, 0 outside the source's field of view.
    """
    from scipy import ndimage

    src = np.asarray(labels).astype(np.int32, copy=False)
    # target voxel -> world (mm) -> source voxel
    matrix = np.linalg.solve(np.asarray(source_affine, float), np.asarray(target_affine, float))
    return ndimage.affine_transform(
        src,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(int(n) for n in target_shape[:3]),
        order=0,
        mode="constant",
        cval=0,
        output=np.int32,
    )
