"""Physical constants and unit conversions used everywhere in qsm_bids.

This module is the single place that defines the gyromagnetic ratio and the
Hz <-> ppm conversion; every other module imports from here.
"""

from __future__ import annotations

import numpy as np

#: Gyromagnetic ratio of the proton over 2*pi, in MHz/T (CODATA 2018).
GAMMA_BAR_MHZ_PER_T: float = 42.57747892

#: Susceptibility of air relative to water, in ppm (water -9.05, air +0.36).
CHI_AIR_PPM: float = 9.4


def larmor_hz(field_strength_t: float) -> float:
    """Proton Larmor frequency in Hz at ``field_strength_t`` tesla."""
    return GAMMA_BAR_MHZ_PER_T * 1e6 * float(field_strength_t)


def hz_to_ppm(field_hz: np.ndarray | float, field_strength_t: float) -> np.ndarray | float:
    """Convert a field offset from Hz to ppm of B0: ``1e6 * f / (gamma_bar * B0)``."""
    return field_hz * (1e6 / larmor_hz(field_strength_t))


def ppm_to_hz(field_ppm: np.ndarray | float, field_strength_t: float) -> np.ndarray | float:
    """Convert a field offset from ppm of B0 to Hz: ``f = 1e-6 * ppm * gamma_bar * B0``."""
    return field_ppm * (larmor_hz(field_strength_t) * 1e-6)
