"""Region names of the regional tables: the deep grey-matter structures and their order.

Shared by the participant report and the group level (no imports from either, so that
neither imports the other).
"""

from __future__ import annotations

import re

#: The deep grey-matter structures, in display order: the one list of them (the demo's and
#: tests' regions, the AAL3 label groups of :data:`qsm_bids.registration.atlas.AAL3_DEEP_GREY`
#: and the patterns below are keyed by these names).
DEEP_GREY: tuple[str, ...] = (
    "caudate",
    "putamen",
    "pallidum",
    "thalamus",
    "substantia_nigra",
    "red_nucleus",
)

#: Each structure of :data:`DEEP_GREY` with the pattern its AAL3 region names match
#: (``Caudate_L``, ``Thal_VPL_R``, ``SN_pc_L``, ``Red_N_R``, ...).
DEEP_GREY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    zip(
        DEEP_GREY,
        (
            re.compile(r"caudate", re.IGNORECASE),
            re.compile(r"putamen", re.IGNORECASE),
            re.compile(r"pallid|globus", re.IGNORECASE),
            re.compile(r"^thal|thalam", re.IGNORECASE),
            re.compile(r"(^|_)sn(_|$)|nigra", re.IGNORECASE),
            re.compile(r"red_?n(uc|_|$)|red nucleus", re.IGNORECASE),
        ),
        strict=True,
    )
)

#: Region name of a table's whole-brain row.
WHOLE_BRAIN = "whole_brain"


def order_regions(regions: list[str]) -> list[str]:
    """Region names with deep grey matter first, then ``whole_brain``, then the rest.

    Parameters
    ----------
    regions : list of str
        Region names (duplicates are dropped, first occurrence kept).

    Returns
    -------
    list of str
        Caudate, putamen, pallidum, thalamus, substantia nigra and red nucleus regions (in
        that order, each group in input order), then ``whole_brain``, then every other
        region in input order.
    """
    unique = list(dict.fromkeys(regions))
    groups: list[list[str]] = [[] for _ in DEEP_GREY_PATTERNS]
    whole, rest = [], []
    for name in unique:
        for k, (_, pattern) in enumerate(DEEP_GREY_PATTERNS):
            if pattern.search(name):
                groups[k].append(name)
                break
        else:
            (whole if name.lower() == WHOLE_BRAIN else rest).append(name)
    return [n for g in groups for n in g] + whole + rest


def is_deep_grey(region: str) -> bool:
    """Whether a region name is one of the deep grey-matter structures."""
    return any(p.search(region) for _, p in DEEP_GREY_PATTERNS)


__all__ = ["DEEP_GREY", "DEEP_GREY_PATTERNS", "WHOLE_BRAIN", "is_deep_grey", "order_regions"]
