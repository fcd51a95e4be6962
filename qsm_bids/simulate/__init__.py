"""Built-in head phantoms and BIDS dataset simulator (``qsm-bids simulate`` and the demo).

``realistic`` (default: :mod:`~qsm_bids.simulate.realistic`,
:mod:`~qsm_bids.simulate.realistic_forward`) simulates on a finer grid with k-space
truncation; ``ideal`` (:mod:`~qsm_bids.simulate.phantom`, :mod:`~qsm_bids.simulate.forward`)
on the acquisition grid with the pipeline's own kernel.
"""

from qsm_bids.simulate.dataset import simulate_dataset
from qsm_bids.simulate.forward import Acquisition, simulate_acquisition
from qsm_bids.simulate.phantom import LABEL_NAMES, HeadPhantom, make_head_phantom, make_subject
from qsm_bids.simulate.realistic import FineSubject, RealismOptions, make_fine_subject
from qsm_bids.simulate.realistic_forward import simulate_realistic_acquisition

__all__ = [
    "LABEL_NAMES",
    "Acquisition",
    "FineSubject",
    "HeadPhantom",
    "RealismOptions",
    "make_fine_subject",
    "make_head_phantom",
    "make_subject",
    "simulate_acquisition",
    "simulate_dataset",
    "simulate_realistic_acquisition",
]
