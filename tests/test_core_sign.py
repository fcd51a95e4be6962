"""The phase-sign check on the phantom's true susceptibility."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.sign import check_phase_sign
from qsm_bids.simulate.phantom import make_head_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_head_phantom(4.0)


def test_true_map_positive_negated_map_negative(phantom):
    chi, brain = phantom.chi, phantom.brain_mask
    ok = check_phase_sign(chi, brain)
    assert ok.sign == 1 and ok.skewness > 1.0
    flipped = check_phase_sign(-chi, brain)
    assert flipped.sign == -1 and flipped.skewness == pytest.approx(-ok.skewness, rel=1e-6)


def test_symmetric_noise_is_inconclusive(phantom):
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, phantom.chi.shape).astype(np.float32)
    check = check_phase_sign(noise, phantom.brain_mask)
    assert check.sign == 0 and abs(check.skewness) < 0.3
    assert check.as_dict()["voxels"] == check.voxels > 1000
