"""Dipole inversion: local field (ppm) -> susceptibility (ppm).

Every method has the signature
``method(local_field, mask, voxel_size, b0_dir, *, weights=None, **params) -> chi``
with ``local_field`` in ppm of B0, ``voxel_size`` in mm, ``b0_dir`` the unit B0 direction in
voxel-index space, and returns a float32 susceptibility map in ppm, zero outside ``mask``.
"""

from qsm_bids.core.inversion.ilsqr import ilsqr
from qsm_bids.core.inversion.medi import medi
from qsm_bids.core.inversion.ndi import ndi
from qsm_bids.core.inversion.nltv import nltv
from qsm_bids.core.inversion.rts import rts
from qsm_bids.core.inversion.single_step import sstv
from qsm_bids.core.inversion.tfi import tfi
from qsm_bids.core.inversion.tgv import tgv
from qsm_bids.core.inversion.tikhonov import tikhonov
from qsm_bids.core.inversion.tkd import tkd
from qsm_bids.core.inversion.tv_admm import tv_admm

__all__ = ["ilsqr", "medi", "ndi", "nltv", "rts", "sstv", "tfi", "tgv", "tikhonov", "tkd"]
__all__ += ["tv_admm"]
