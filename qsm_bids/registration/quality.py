"""Registration quality: does the template brain land on the subject's brain, and does the
subject's field of view hold a whole brain?

Measured after every registration (:func:`measure_registration_quality`), recorded as
``"RegistrationQuality"`` in the transform's JSON sidecar, and used to decide whether the AAL3
regional table may be written (:func:`regionstats_decision`). Three numbers:

``Dice``
    Dice overlap ``2 |A & B| / (|A| + |B|)`` of the template brain mask warped into the
    subject (the registration's ``to_subject`` transforms, linear interpolation, > 0.5) with
    the subject's brain mask, on the subject's grid. Low when the registration put the brain
    in the wrong place or shape. It is blind to a crop (inside a crop that lies wholly in the
    brain both masks fill the crop and the Dice is near 1), which is what the next two catch.
``Coverage``
    The fraction of the template brain mask that lies inside the subject's image field of
    view after registration: an indicator of the field of view (1 on every voxel of the
    subject grid) is carried into template space (``to_template`` transforms, linear, > 0.5)
    and the template brain voxels it covers are counted. About 1 for a whole-head acquisition;
    the fraction of the brain a slab or crop holds otherwise.
``BrainVolumeRatio``
    Volume (mm^3) of the subject's brain mask over that of the template brain mask, without
    any registration. A registration can stretch a crop over the whole template (then the
    coverage would look complete); this ratio cannot be fooled that way.

Thresholds (:data:`THRESHOLDS`) and how they were chosen
--------------------------------------------------------
Measured with :func:`measure_registration_quality` after
:func:`~qsm_bids.registration.ants_registration.register_to_template`
(December 2026) on the simulated head phantom (:mod:`qsm_bids.simulate.phantom`, moved and
deformed by ``make_subject``; 3 mm grid with the tests' smallest ANTs schedule on the 3 mm
template, 2 mm grid with a fast schedule on the 2 mm template), on slabs and crops cut from
it, on the one real brain of the 2016 QSM challenge (its mask, 1.06 mm, default schedule on
the 2 mm template) and on the real 7 T crop ``real-7t-crop`` (51 x 51 x 41 voxels of
0.47 x 0.47 x 1 mm, all cortex)::

    case                                              Dice   Coverage  BrainVolumeRatio
    phantom 3 mm, full head, brain mask (2 subjects)  0.98     1.00        0.99
    phantom 3 mm, full head, mask eroded by 6 mm      0.98     1.00        0.78
    phantom 2 mm, full head, brain mask (2 subjects)  0.99     1.00        1.00-1.01
    phantom 2 mm, full head, mask eroded by 6 mm      0.98     1.00        0.78-0.79
    phantom 3 mm, lowest 10 / 20 / 30 % of the
      brain's height outside the field of view        0.98   0.99/0.95/0.88  0.99/0.94/0.86
    phantom 3 mm, highest 10 / 20 % outside           0.98   0.98/0.87     0.97/0.87
    phantom 3 mm, 15 % outside at both ends           0.98     0.91        0.90
    phantom 2-3 mm, slab of the middle 2/3 height     0.98     0.87-0.88   0.86-0.88
    phantom 2-3 mm, slab of 30 mm                     0.99     0.31-0.32   0.31-0.32
    phantom 2-3 mm, cortex crop 51 x 51 x 42 mm       0.61-0.69 0.07-0.08  0.03
    real 7 T crop (24 x 24 x 41 mm)                   1.00     0.01        0.01
    2016 challenge brain                              0.92     1.00        0.59
    the same, subject shifted 5 / 10 / 20 mm          0.87/0.82/0.72  1.00  0.59

(the phantom is the template's own anatomy, so its Dice is higher than a real brain's; a
crop wholly inside the brain has a Dice near 1). The thresholds:

* ``Dice >= 0.80``: a real brain registered well reaches about 0.9 (0.92 on the challenge
  brain); the same brain misplaced by 10 mm drops to 0.82 and by 20 mm to 0.72, so a
  misregistration of more than about a centimetre fails.
* ``Coverage >= 0.90``: an acquisition whose field of view misses the lowest fifth of the
  brain's height (medulla, lower cerebellum: 0.95) or 15 % at both ends (0.91) passes; a slab
  of two thirds of the brain (0.87-0.88), a slab missing the upper fifth (0.87) or anything
  smaller fails. Regions outside the field of view of a passing run are listed with 0 voxels.
* ``BrainVolumeRatio >= 0.40``: the template's brain mask (nilearn's, 1883 cm^3) is large;
  the challenge's real adult brain mask is 0.59 of it, a 6 mm eroded mask of the phantom
  0.78; 0.40 (750 cm^3) leaves room for small and atrophic brains and fails every crop
  (0.01-0.03) and thin slab (0.31), also when a registration stretched it over the template.

The table is skipped when any of the three is below its threshold, unless forced.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

#: Minimum Dice of the warped template brain mask with the subject's brain mask.
DICE_MIN = 0.80
#: Minimum fraction of the template brain inside the subject's field of view.
COVERAGE_MIN = 0.90
#: Minimum volume of the subject's brain mask relative to the template brain mask.
BRAIN_VOLUME_RATIO_MIN = 0.40
#: The thresholds as recorded in the sidecar (key -> minimum).
THRESHOLDS: dict[str, float] = {
    "Dice": DICE_MIN,
    "Coverage": COVERAGE_MIN,
    "BrainVolumeRatio": BRAIN_VOLUME_RATIO_MIN,
}
#: Value of the sidecar key ``RegionalStatistics`` when the table was written.
WRITTEN = "written"
#: Start of the value of ``RegionalStatistics`` when the table was not written.
SKIPPED = "skipped"

ImageLike = nib.Nifti1Image | str | os.PathLike


def dice_coefficient(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two boolean masks (0 when both are empty).

    Parameters
    ----------
    a, b : bool ndarray
        Masks of one shape.

    Returns
    -------
    float
        In [0, 1].
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def covered_fraction(region: np.ndarray, cover: np.ndarray) -> float:
    """Fraction of the voxels of ``region`` that lie inside ``cover`` (0 for an empty region).

    Parameters
    ----------
    region, cover : bool ndarray
        Masks of one shape (e.g. the template brain and the subject's field of view carried
        into template space).
    """
    region = np.asarray(region, dtype=bool)
    cover = np.asarray(cover, dtype=bool)
    if region.shape != cover.shape:
        raise ValueError(f"mask shapes differ: {region.shape} and {cover.shape}")
    n = int(region.sum())
    return 0.0 if n == 0 else int(np.count_nonzero(region & cover)) / n


def mask_volume_mm3(img: nib.Nifti1Image) -> float:
    """Volume (mm^3) of the voxels > 0 of a 3D mask image (voxel volume from its affine)."""
    voxel = abs(float(np.linalg.det(np.asarray(img.affine, dtype=np.float64)[:3, :3])))
    data = np.asarray(img.dataobj)
    if data.ndim > 3:
        data = data[..., 0]
    return float(np.count_nonzero(data > 0)) * voxel


@dataclass(frozen=True)
class RegistrationQuality:
    """Quality of one registration and whether it passes :data:`THRESHOLDS`.

    Attributes
    ----------
    dice : float
        Dice of the warped template brain mask with the subject's brain mask (subject grid).
    coverage : float
        Fraction of the template brain inside the subject's field of view.
    brain_volume_ratio : float
        Subject brain mask volume / template brain mask volume (no registration).
    thresholds : dict[str, float]
        Minimum per key (``Dice``, ``Coverage``, ``BrainVolumeRatio``).
    """

    dice: float
    coverage: float
    brain_volume_ratio: float
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))

    @property
    def failures(self) -> tuple[str, ...]:
        """One sentence per measure below its threshold (empty when every one passes)."""
        t = self.thresholds
        out: list[str] = []
        if not self.dice >= t["Dice"]:
            out.append(
                f"Dice {self.dice:.2f} of the template brain mask warped into the subject "
                f"with the subject's brain mask, below {t['Dice']:.2f}: a misregistration"
            )
        if not self.coverage >= t["Coverage"]:
            out.append(
                f"the field of view holds {self.coverage:.0%} of the template brain, below "
                f"{t['Coverage']:.0%}: a slab or crop"
            )
        if not self.brain_volume_ratio >= t["BrainVolumeRatio"]:
            out.append(
                f"the brain mask is {self.brain_volume_ratio:.0%} of the template brain's "
                f"volume, below {t['BrainVolumeRatio']:.0%}: a slab or crop, or a mask that "
                "misses much of the brain"
            )
        return tuple(out)

    @property
    def passed(self) -> bool:
        """True when every measure reaches its threshold (NaN never passes)."""
        return not self.failures

    def to_dict(self) -> dict:
        """The sidecar's ``RegistrationQuality`` object (values rounded to 4 decimals)."""

        def r(x: float) -> float | None:
            return round(float(x), 4) if math.isfinite(x) else None

        return {
            "Dice": r(self.dice),
            "Coverage": r(self.coverage),
            "BrainVolumeRatio": r(self.brain_volume_ratio),
            "Thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "Passed": self.passed,
            "Failures": list(self.failures),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RegistrationQuality:
        """Inverse of :meth:`to_dict` (``None`` values read as NaN)."""

        def f(x) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            dice=f(d["Dice"]),
            coverage=f(d["Coverage"]),
            brain_volume_ratio=f(d["BrainVolumeRatio"]),
            thresholds={k: float(v) for k, v in d.get("Thresholds", THRESHOLDS).items()},
        )

    def summary(self) -> str:
        """The measures in words, e.g. ``Dice 0.93, coverage 100%, brain volume 59% of the
        template's (passed)``."""
        return (
            f"Dice {self.dice:.2f}, coverage {self.coverage:.0%}, brain volume "
            f"{self.brain_volume_ratio:.0%} of the template's "
            f"({'passed' if self.passed else 'failed'})"
        )


def measure_registration_quality(
    subject_mask: ImageLike,
    result,
    template_mask: ImageLike,
    *,
    threads: int = 1,
    thresholds: dict[str, float] | None = None,
) -> RegistrationQuality:
    """Measure a subject <-> template registration (see the module docstring).

    Parameters
    ----------
    subject_mask : nibabel image or path
        The subject's brain mask on the registered (GRE) grid; its grid is the field of view.
    result : RegistrationResult
        From :func:`qsm_bids.registration.ants_registration.register_to_template`.
    template_mask : nibabel image or path
        The template brain mask on the grid the registration ran on
        (:func:`qsm_bids.registration.template.load_template_mask`).
    threads : int, default 1
        ITK threads.
    thresholds : dict or None, default None
        Minimum per measure; default :data:`THRESHOLDS`.

    Returns
    -------
    RegistrationQuality
    """
    from qsm_bids.registration.ants_registration import (
        _as_3d,
        to_subject_space,
        to_template_space,
    )

    subj = _as_3d(subject_mask)
    tmask = _as_3d(template_mask)
    subj_brain = np.asarray(subj.dataobj) > 0
    tpl_brain = np.asarray(tmask.dataobj) > 0
    # (1) template brain in the subject: overlap with the subject's brain mask
    warped = to_subject_space(tmask, subj, result, interpolation="linear", threads=threads)
    dice = dice_coefficient(np.asarray(warped.dataobj) > 0.5, subj_brain)
    # (2) the subject's field of view in template space: how much of the template brain it holds
    fov = nib.Nifti1Image(np.ones(subj.shape[:3], dtype=np.float32), subj.affine)
    fov_tpl = to_template_space(fov, tmask, result, interpolation="linear", threads=threads)
    coverage = covered_fraction(tpl_brain, np.asarray(fov_tpl.dataobj) > 0.5)
    # (3) physical brain volume, no registration involved
    tpl_volume = mask_volume_mm3(tmask)
    ratio = mask_volume_mm3(subj) / tpl_volume if tpl_volume > 0 else float("nan")
    return RegistrationQuality(
        dice=float(dice),
        coverage=float(coverage),
        brain_volume_ratio=float(ratio),
        thresholds=dict(THRESHOLDS if thresholds is None else thresholds),
    )


def regionstats_decision(quality: RegistrationQuality, *, force: bool = False) -> tuple[bool, str]:
    """Whether the regional table is written, and the sidecar's ``RegionalStatistics`` value.

    Parameters
    ----------
    quality : RegistrationQuality
        Of the run's registration.
    force : bool, default False
        ``--force-regionstats``: write the table even when the quality fails.

    Returns
    -------
    write : bool
    status : str
        ``"written"`` (passed); ``"written: forced (--force-regionstats) although <reasons>"``
        (failed but forced); ``"skipped: <reasons>"`` (failed): every value that is not
        written starts with ``"skipped"``.
    """
    if quality.passed:
        return True, WRITTEN
    reasons = "; ".join(quality.failures)
    if force:
        return True, f"{WRITTEN}: forced (--force-regionstats) although {reasons}"
    return False, f"{SKIPPED}: {reasons}"
