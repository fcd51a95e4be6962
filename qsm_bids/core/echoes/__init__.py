"""Multi-echo combination (stage ``combine``): total field in Hz from unwrapped phase.

* :func:`combine_weighted_fit` -- the stage function: inverse-variance (magnitude^2)
  weighted linear fit of phase over echo time, with the phase offset handled by MCPC-3D-S,
  a fitted intercept, or neglected.
* :func:`mcpc3ds_offset` -- smoothed phase offset at TE = 0 (Eckstein et al., MRM 2018).
* :func:`weighted_phase_fit` -- the voxel-wise weighted least-squares fit itself.
* :func:`combine_nonlinear_fit` -- stage function: nonlinear complex fit (Liu et al., MRM
  2013) returning the field and its noise SD map (Hz).
"""

from qsm_bids.core.echoes.fit import combine_weighted_fit, weighted_phase_fit
from qsm_bids.core.echoes.nonlinear import background_noise_sigma, combine_nonlinear_fit
from qsm_bids.core.echoes.offset import gaussian_smooth_normalised, mcpc3ds_offset

__all__ = [
    "background_noise_sigma",
    "combine_nonlinear_fit",
    "combine_weighted_fit",
    "gaussian_smooth_normalised",
    "mcpc3ds_offset",
    "weighted_phase_fit",
]
