"""Built-in head phantom and BIDS dataset simulator (``qsm-bids simulate`` and the demo)."""

from qsm_bids.simulate.dataset import simulate_dataset
from qsm_bids.simulate.forward import Acquisition, simulate_acquisition
from qsm_bids.simulate.phantom import LABEL_NAMES, HeadPhantom, make_head_phantom, make_subject

__all__ = [
    "LABEL_NAMES",
    "Acquisition",
    "HeadPhantom",
    "make_head_phantom",
    "make_subject",
    "simulate_acquisition",
    "simulate_dataset",
]
