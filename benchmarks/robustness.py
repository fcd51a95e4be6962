"""The default pipeline under acquisitions it was not tuned on: NRMSE per condition and recipe.

Usage::

    .venv/bin/python benchmarks/robustness.py [--resolution 2] [--recipes default tv fast]
        [--conditions reference snr30 ...] [--phantom realistic|ideal]

The defaults were chosen on the built-in phantom at 3 T and 7 T with 4-5 echoes and SNR 100
(benchmarks/RESULTS.md). Held-out data will differ in field strength, echo count and
spacing, noise, orientation and phase encoding, so this script simulates the built-in head
phantom under such conditions and runs each recipe through the participant level (no
registration), scoring the map against the truth on the truth's brain mask intersected with
the pipeline's local mask (:func:`qsm_bids.evaluate.evaluate_maps`; NRMSE after removing each
map's mean, brain eroded by 3 voxels). A condition where the default is not the best recipe,
or is far from its reference value, is a defect to look at.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from accuracy import builtin_truth, load, participant_config  # benchmarks/accuracy.py (same folder)

from qsm_bids.cli.participant import run_participant_level
from qsm_bids.core.linalg import one_blas_thread
from qsm_bids.evaluate import evaluate_maps
from qsm_bids.simulate.dataset import simulate_dataset

#: name -> (description, simulate_dataset keyword arguments)
CONDITIONS: dict[str, tuple[str, dict]] = {
    "reference": ("3 T, 4 echoes 4-28 ms, SNR 100 (the tuning condition)", {}),
    "snr30": ("3 T, SNR 30", {"snr": 30.0}),
    "snr300": ("3 T, SNR 300", {"snr": 300.0}),
    "1.5T": (
        "1.5 T, 5 echoes 5-45 ms",
        {"field_strength_t": 1.5, "echo_times_s": (0.005, 0.015, 0.025, 0.035, 0.045)},
    ),
    "7T-oblique30": (
        "7 T, 4 echoes 4-22 ms, grid tilted 30 degrees",
        {
            "field_strength_t": 7.0,
            "echo_times_s": (0.004, 0.010, 0.016, 0.022),
            "oblique_deg": 30.0,
        },
    ),
    "single-echo": ("3 T, one echo at 20 ms", {"echo_times_s": (0.020,)}),
    "two-echoes": ("3 T, two echoes 6 and 18 ms", {"echo_times_s": (0.006, 0.018)}),
    "long-te": (
        "3 T, 6 echoes 5-50 ms (long echoes, wraps in veins)",
        {"echo_times_s": (0.005, 0.014, 0.023, 0.032, 0.041, 0.050)},
    ),
    "integer-phase": ("3 T, phase as int16 (dcm2niix)", {"phase_format": "integer"}),
}


def run_condition(
    name: str,
    resolution: float,
    recipes: list[str],
    tmp: Path,
    seed: int,
    phantom: str = "realistic",
) -> list[str]:
    """Simulate one condition and run every recipe; one markdown row per recipe."""
    description, kwargs = CONDITIONS[name]
    bids = simulate_dataset(
        tmp / f"bids-{name}", resolution_mm=resolution, seed=seed, phantom=phantom, **kwargs
    )
    truth = builtin_truth(bids)
    rows = []
    for recipe_name in recipes:
        out = tmp / f"out-{name}-{recipe_name}"
        t0 = time.perf_counter()
        res = run_participant_level(
            participant_config(bids, out, tmp / f"w-{name}-{recipe_name}", recipe_name)
        )
        seconds = time.perf_counter() - t0
        if not res.succeeded:
            rows.append(f"| {name} | {description} | {recipe_name} | failed | | | {seconds:.1f} |")
            continue
        anat = out / "sub-01" / "anat"
        chi = load(anat / "sub-01_Chimap.nii.gz")
        local_mask = load(anat / "sub-01_desc-local_mask.nii.gz") > 0
        region = truth["brain"] & local_mask
        m = evaluate_maps(chi, truth["chi"], region, truth["labels"], truth["names"])
        kept = 100.0 * np.count_nonzero(region) / np.count_nonzero(truth["brain"])
        rows.append(
            f"| {name} | {description} | {recipe_name} | {m['nrmse_percent']:.1f} | "
            f"{m['hfen_percent']:.1f} | {kept:.0f} | {seconds:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--recipes", nargs="+", default=["default", "tv", "fast"])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--phantom",
        choices=["realistic", "ideal"],
        default="realistic",
        help="built-in simulator (qsm-bids simulate --phantom; default: realistic)",
    )
    ns = parser.parse_args()
    print(
        "| condition | acquisition | recipe | NRMSE % | HFEN % | brain kept % | time (s) |\n"
        "|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in ns.conditions:
            rows = run_condition(name, ns.resolution, ns.recipes, Path(tmp), ns.seed, ns.phantom)
            for row in rows:
                print(row, flush=True)


if __name__ == "__main__":
    # as the pipeline's stage interfaces do (BLAS threads busy-wait and slow the FFTs)
    with one_blas_thread():
        main()
