"""Background field removal: separate the local field (sources inside the brain mask) from
the background field (sources outside it: air, bone, shim residuals).

* :func:`vsharp` -- V-SHARP (Wu et al., MRM 2012), returns an eroded mask.
* :func:`pdf` -- projection onto dipole fields (Liu et al., NMR Biomed 2011), keeps the mask.
* :func:`resharp` -- Tikhonov-regularised SHARP (Sun & Wilman, MRM 2014), eroded mask.
* :func:`ismv` -- iterative spherical mean value (Wen et al., MRM 2014), eroded mask.
* :func:`lbv` -- Laplacian boundary value (Zhou et al., NMR Biomed 2014), peeled mask.
* :func:`remove_with_feedback` -- any of them rerun on the total field minus the field of a
  susceptibility estimate (:mod:`qsm_bids.core.background.feedback`), and :func:`relax`,
  its over-relaxed step.
* :func:`no_background_removal` -- identity stage (masked total field) for single-step
  inversions such as :func:`qsm_bids.core.inversion.single_step.sstv`.

All take ``(field, mask, voxel_size, b0_dir, *, weights=None, <tunables>)`` and return
``(local_field float32, local_mask bool)`` in the unit of ``field``. None can recover the
harmonic (including constant) part of the local field; the referencing step demeans chi.
"""

from qsm_bids.core.background.feedback import relax, remove_with_feedback, susceptibility_field
from qsm_bids.core.background.ismv import ismv
from qsm_bids.core.background.lbv import lbv
from qsm_bids.core.background.none import no_background_removal
from qsm_bids.core.background.pdf import pdf
from qsm_bids.core.background.resharp import resharp
from qsm_bids.core.background.vsharp import vsharp

__all__ = ["ismv", "lbv", "pdf", "resharp", "vsharp"]
__all__ += ["no_background_removal", "relax", "remove_with_feedback", "susceptibility_field"]
