"""Check of the phase sign convention from the susceptibility map itself.

Scanners differ in the handedness of their phase (``phase = +gamma dB TE`` or ``-gamma
dB TE``); with the wrong convention every map comes out negated. The check relies on what
every healthy brain shows: its strongest *extended* sources are paramagnetic. Veins
(deoxyhaemoglobin, about +0.3 to +0.45 ppm) and the iron-rich deep grey nuclei (globus
pallidus, substantia nigra, red nucleus, dentate: +0.1 to +0.2 ppm) stand out above the
bulk of the tissue, while the diamagnetic white matter stays within a few hundredths of a
ppm of it (about -0.03 ppm); the consensus recommendations (QSM Consensus Organization
Committee, MRM 2024, doi:10.1002/mrm.30006) ask for exactly this sanity check, veins
and globus pallidus bright. Strong *diamagnetic* sources are focal and pathological or
incidental: calcifications, strongly diamagnetic (reviewed with the paramagnetic iron
and blood sources in Wang Y, Liu T, MRM 2015;73:82-101, doi:10.1002/mrm.25358; the QSM
challenge 2.0 phantom has one, Bilgic et al., MRM 2021;86:1241-1255).

Evidence measure (:func:`check_phase_sign`)
-------------------------------------------
The skewness of the map used before is dominated by its most extreme voxels: a few
calcifications give a skewness of -7 to -14, a lateral slab of cortex -0.7, and the
former rule (``|skewness| >= 0.3`` decides) flipped these correct maps. The measure is
therefore a *count* of moderately strong voxels in each tail, with three safeguards:

1. ``v`` = the map inside the mask eroded by ``erode_voxels`` (boundary artefacts left
   out), minus its median: a robust centre, so the referencing does not matter.
2. Focal strong sources, ``|v| > focal_ppm`` (0.5 ppm: calcifications, haemorrhages,
   residual air, their streaks' cores) and a rim of ``focal_rim_mm`` around them, are
   left out: whatever their sign, they say nothing about the convention, and without
   this a few calcifications outweigh the veins (see ``tests/test_core_sign.py``).
3. The tail threshold ``t = max(tail_ppm, tail_sigmas * 1.4826 * MAD(v))`` (0.08 ppm, or
   3 robust standard deviations where noise is larger): above the white-grey matter
   contrast (WM is 0.03-0.05 ppm below the median) and above the noise, which is
   symmetric in sign and so only dilutes the evidence.

With ``P`` and ``N`` the voxels above ``+t`` and below ``-t``, the evidence is the tail
asymmetry ``A = (P - N) / (P + N)`` in [-1, 1], and ``A2`` the same with the *strong*
tails beyond ``+-2 t``. The decision:

* ``A >= margin`` (0.6, i.e. at least 4 paramagnetic voxels per diamagnetic one),
  ``P >= n_min`` and ``A2 >= 0``: consistent (``sign`` +1);
* ``A <= -margin``, ``N >= n_min`` and ``A2 <= 0``: reversed (``sign`` -1);
* otherwise: **abstain** (``sign`` 0): too few strong voxels (a small field of view
  without deep grey nuclei or large veins, a very noisy map), tails too balanced
  (diamagnetic lesions, noise), or strong tails that lean the other way; the caller then
  keeps the sign and warns.

The strong tails are the second safeguard against diamagnetic lesions: veins and the
iron-rich nuclei reach further from the median (+0.15 to +0.45 ppm) than white matter or
a diamagnetic lesion of -0.1 to -0.2 ppm, so an extended lesion load can outnumber the
paramagnetic voxels at ``t`` but not at ``2 t``; where the map reaches ``2 t`` on
neither side (coarse or smooth maps), they do not veto. ``n_min = max(min_tail_voxels,
min_tail_ml / voxel volume)``: 20 voxels, and 1 mL of tissue (about half a globus
pallidus) when the voxel size is known.

Measured on the built-in head phantom at 4 mm (TKD of the true local field, the mask
eroded by 2 voxels; ``tests/test_core_sign.py``): the correct map gives A = +1.00 (69
voxels beyond t = 0.08 ppm, none below; A2 = +1.00), also with field noise of 0.003 ppm,
and -1.00 negated; with 5 calcifications of -1 ppm A = +0.82 (34 voxels left out as
focal; the skewness is -6.9), so both signs are still found. Abstentions: 6 diamagnetic
lesions of -0.1 ppm (r = 6 mm) A = +0.18; 12 of -0.15 ppm -0.51; 20 of -0.15 ppm -0.67
but A2 = +0.27; 2 calcifications of -1.5 ppm (r = 6 mm) +0.54; a lateral cortex crop or
slab has no voxel beyond t (skewness -0.13 and -0.70);
field noise of 0.01 ppm +0.15 (t = 0.14 ppm), of 0.03 ppm -0.10 (t = 0.38 ppm). The
limit: a correct map is flipped when diamagnetic tissue outnumbers the veins and nuclei
4 to 1 beyond t and also dominates beyond 2 t, which is what a negated brain looks like
(on the phantom: 16 lesions of -0.25 ppm, r = 6 mm, 19 mL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DECISIONS", "SignCheck", "check_phase_sign"]

#: ``SignCheck.decision`` for ``sign`` +1, -1 and 0.
DECISIONS: dict[int, str] = {1: "consistent", -1: "reversed", 0: "abstained"}


@dataclass(frozen=True)
class SignCheck:
    """Result of :func:`check_phase_sign`: the decision and the evidence behind it."""

    sign: int
    """+1 if the map looks correct, -1 if it looks negated, 0 if the check abstains."""
    decision: str
    """``"consistent"``, ``"reversed"`` or ``"abstained"`` (:data:`DECISIONS`)."""
    asymmetry: float
    """Tail asymmetry ``(P - N) / (P + N)`` in [-1, 1]; 0 when both tails are empty."""
    positive_voxels: int
    """``P``: voxels more than ``threshold_ppm`` above the median."""
    negative_voxels: int
    """``N``: voxels more than ``threshold_ppm`` below the median."""
    strong_asymmetry: float
    """``A2``: the asymmetry of the strong tails, beyond twice ``threshold_ppm``."""
    strong_positive_voxels: int
    """Voxels more than twice ``threshold_ppm`` above the median."""
    strong_negative_voxels: int
    """Voxels more than twice ``threshold_ppm`` below the median."""
    threshold_ppm: float
    """Tail threshold ``t`` (ppm)."""
    min_tail_voxels: int
    """``n_min``: the voxels the winning tail needs for a decision."""
    margin: float
    """The asymmetry a decision needs (either sign)."""
    excluded_voxels: int
    """Voxels left out as focal strong sources or their rim."""
    voxels: int
    """Voxels of the eroded mask."""
    skewness: float
    """Skewness of the map clipped to +-``clip_ppm`` (reported only; not decisive)."""
    reason: str
    """One sentence on why the check decided or abstained."""

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready form."""
        return asdict(self)


def _skewness(v: np.ndarray) -> float:
    d = v - v.mean()
    sd = float(np.sqrt(np.mean(d * d)))
    return float(np.mean(d**3) / sd**3) if sd > 0 else 0.0


def check_phase_sign(
    chi: np.ndarray,
    mask: np.ndarray,
    *,
    voxel_size: Sequence[float] | None = None,
    erode_voxels: int = 2,
    tail_ppm: float = 0.08,
    tail_sigmas: float = 3.0,
    focal_ppm: float = 0.5,
    focal_rim_mm: float = 2.0,
    margin: float = 0.6,
    min_tail_voxels: int = 20,
    min_tail_ml: float = 1.0,
    clip_ppm: float = 1.0,
) -> SignCheck:
    """Whether a susceptibility map has the paramagnetic tail of a brain with the right sign.

    The evidence measure and the decision rule are described in the module docstring
    (:mod:`qsm_bids.core.sign`): a tail-count asymmetry around the median at ``t`` and
    ``2 t``, focal strong sources left out, with a margin and a minimum count; weak
    evidence abstains.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility in ppm (any reference).
    mask : (X, Y, Z) array
        Brain mask; eroded by ``erode_voxels`` to leave out boundary artefacts (not below
        100 voxels).
    voxel_size : 3 floats or None, default None
        Voxel size in mm: sets the focal rim in voxels and the ``min_tail_ml`` count.
        None: a 1-voxel rim and only ``min_tail_voxels``.
    erode_voxels : int, default 2
        Erosion of the mask (voxels).
    tail_ppm : float, default 0.08
        Smallest tail threshold (ppm above or below the median).
    tail_sigmas : float, default 3.0
        The tail threshold is at least this many robust standard deviations
        (1.4826 * median absolute deviation) of the map.
    focal_ppm : float, default 0.5
        Voxels further than this from the median (ppm) are focal strong sources, left out
        with their rim.
    focal_rim_mm : float, default 2.0
        Rim left out around focal sources (mm; at least one voxel).
    margin : float, default 0.6
        The tail asymmetry a decision needs (0 < margin <= 1).
    min_tail_voxels : int, default 20
        The winning tail needs at least this many voxels.
    min_tail_ml : float, default 1.0
        ... and, with ``voxel_size``, at least this volume (mL).
    clip_ppm : float, default 1.0
        Clipping of the reported skewness (ppm).

    Returns
    -------
    SignCheck
    """
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    x = np.asarray(chi, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if x.shape != m.shape:
        raise ValueError(f"chi {x.shape} and mask {m.shape} must have the same shape")
    if erode_voxels > 0:
        eroded = ndimage.binary_erosion(m, iterations=int(erode_voxels))
        m = eroded if eroded.sum() >= 100 else m
    n_min = int(min_tail_voxels)
    rim = 1
    if voxel_size is not None:
        vox = np.asarray(voxel_size, dtype=np.float64)
        n_min = max(n_min, math.ceil(min_tail_ml * 1000.0 / float(np.prod(vox))))
        rim = max(1, math.ceil(focal_rim_mm / float(vox.min())))
    n = int(m.sum())
    if n < 10:
        return SignCheck(
            sign=0,
            decision=DECISIONS[0],
            asymmetry=0.0,
            positive_voxels=0,
            negative_voxels=0,
            strong_asymmetry=0.0,
            strong_positive_voxels=0,
            strong_negative_voxels=0,
            excluded_voxels=0,
            threshold_ppm=float(tail_ppm),
            min_tail_voxels=n_min,
            margin=float(margin),
            voxels=n,
            skewness=0.0,
            reason=f"abstained: only {n} voxels in the mask",
        )
    skew = _skewness(np.clip(x[m], -clip_ppm, clip_ppm))
    centred = np.where(m, x - float(np.median(x[m])), 0.0)
    focal = ndimage.binary_dilation(np.abs(centred) > focal_ppm, iterations=rim) & m
    v = centred[m & ~focal]
    sigma = 1.4826 * float(np.median(np.abs(v))) if v.size else 0.0
    t = max(float(tail_ppm), float(tail_sigmas) * sigma)
    pos, neg = int(np.count_nonzero(v > t)), int(np.count_nonzero(v < -t))
    pos2, neg2 = int(np.count_nonzero(v > 2 * t)), int(np.count_nonzero(v < -2 * t))
    asym = (pos - neg) / (pos + neg) if pos + neg else 0.0
    asym2 = (pos2 - neg2) / (pos2 + neg2) if pos2 + neg2 else 0.0
    counts = f"{pos} voxels above +{t:.3f} ppm, {neg} below; beyond +-{2 * t:.3f}: {pos2}, {neg2}"
    if asym >= margin and pos >= n_min and asym2 >= 0:
        sign, reason = 1, f"paramagnetic tail: {counts}"
    elif asym <= -margin and neg >= n_min and asym2 <= 0:
        sign, reason = -1, f"diamagnetic tail: {counts}"
    else:
        sign = 0
        if max(pos, neg) < n_min:
            reason = (
                f"abstained: only {pos} + {neg} voxels beyond +-{t:.3f} ppm ({n_min} "
                "needed); no deep grey nuclei or large veins in the mask, or too noisy"
            )
        elif abs(asym) < margin:
            reason = f"abstained: tail asymmetry {asym:+.2f} is within +-{margin:g} ({counts})"
        else:
            reason = (
                f"abstained: the tail asymmetry {asym:+.2f} is contradicted by the strong "
                f"tails ({asym2:+.2f}; {counts})"
            )
    return SignCheck(
        sign=sign,
        decision=DECISIONS[sign],
        asymmetry=float(asym),
        positive_voxels=pos,
        negative_voxels=neg,
        strong_asymmetry=float(asym2),
        strong_positive_voxels=pos2,
        strong_negative_voxels=neg2,
        threshold_ppm=float(t),
        min_tail_voxels=n_min,
        margin=float(margin),
        excluded_voxels=int(focal.sum()),
        voxels=n,
        skewness=skew,
        reason=reason,
    )
