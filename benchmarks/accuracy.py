"""Accuracy of each dipole inversion and background removal method on the head phantom.

Usage::

    .venv/bin/python benchmarks/accuracy.py [--resolution 2.0] [--field-strength 3.0]

For one simulated subject it reports

1. dipole inversion alone, given the true local field plus Gaussian noise (ppm): NRMSE %
   (brain eroded by 3 voxels, both demeaned), worst deep-grey region error (ppm), run time;
2. background removal alone, given the true total field: local-field NRMSE %;
3. the full participant pipeline (each built-in recipe) from magnitude and phase.

Results go to stdout as Markdown tables, for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids import registry
from qsm_bids.cli.participant import run_participant_level
from qsm_bids.core.kernels import b0_direction, voxel_sizes
from qsm_bids.core.metrics import evaluation_mask, nrmse
from qsm_bids.core.physics import hz_to_ppm
from qsm_bids.evaluate import DEEP_GREY, evaluate_against_truth, evaluate_arrays, read_label_names
from qsm_bids.recipe import builtin_recipes, load_recipe
from qsm_bids.simulate.dataset import simulate_dataset


def load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--field-strength", type=float, default=3.0)
    parser.add_argument("--noise-ppm", type=float, default=0.001, help="local field noise SD")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bids = simulate_dataset(
            tmp / "bids",
            resolution_mm=ns.resolution,
            field_strength_t=ns.field_strength,
            seed=ns.seed,
        )
        truth_dir = bids / "derivatives" / "qsm_bids-truth"
        anat = truth_dir / "sub-01" / "anat"
        img = nb.load(anat / "sub-01_Chimap.nii.gz")
        vs, b0 = voxel_sizes(img.affine), tuple(b0_direction(img.affine))
        chi = load(anat / "sub-01_Chimap.nii.gz")
        brain = load(anat / "sub-01_desc-brain_mask.nii.gz") > 0
        labels = load(anat / "sub-01_dseg.nii.gz").astype(np.int32)
        names = read_label_names(truth_dir / "dseg.tsv")
        total = load(anat / "sub-01_desc-total_fieldmap.nii.gz")
        local = load(anat / "sub-01_desc-local_fieldmap.nii.gz")
        print(
            f"phantom {chi.shape} at {ns.resolution} mm, {ns.field_strength} T; "
            f"local-field noise {ns.noise_ppm} ppm"
        )

        rng = np.random.default_rng(ns.seed)
        local_ppm = hz_to_ppm(local, ns.field_strength).astype(np.float32)
        noisy = (local_ppm + ns.noise_ppm * rng.standard_normal(local.shape)).astype(np.float32)
        noisy *= brain
        print("\n### Dipole inversion given the true local field\n")
        print("| method | NRMSE % | worst DGM error (ppm) | time (s) |\n|---|---|---|---|")
        for algo in registry.algorithms("inversion"):
            func = registry.get_function("inversion", algo)
            t0 = time.perf_counter()
            est = func(noisy, brain, vs, b0, **registry.resolve("inversion", algo, {}))
            sec = time.perf_counter() - t0
            ev = evaluate_arrays(est, chi, brain, labels, names)
            worst = max(abs(v) for k, v in ev.region_errors().items() if k in DEEP_GREY)
            print(f"| {algo} | {ev.nrmse_percent:.1f} | {worst:.4f} | {sec:.1f} |")

        print("\n### Background removal given the true total field\n")
        print("| method | local-field NRMSE % | time (s) |\n|---|---|---|")
        for algo in registry.algorithms("background"):
            func = registry.get_function("background", algo)
            t0 = time.perf_counter()
            est, m = func(total, brain, vs, b0, **registry.resolve("background", algo, {}))
            sec = time.perf_counter() - t0
            e = nrmse(est, local, evaluation_mask(m & brain))
            print(f"| {algo} | {e:.1f} | {sec:.1f} |")

        print("\n### Full pipeline from magnitude and phase\n")
        print("| recipe | NRMSE % | worst DGM error (ppm) | time (s) |\n|---|---|---|---|")
        for name in builtin_recipes():
            out = tmp / f"out-{name}"
            res = run_participant_level(bids, out, load_recipe(name), work_dir=tmp / f"w-{name}")
            run = res.succeeded[0]
            d = out / "sub-01" / "anat"
            ev = evaluate_against_truth(
                d / "sub-01_Chimap.nii.gz", truth_dir, run.subject,
                mask=d / "sub-01_desc-local_mask.nii.gz",
            )  # fmt: skip
            worst = max(abs(v) for k, v in ev.region_errors().items() if k in DEEP_GREY)
            print(f"| {name} | {ev.nrmse_percent:.1f} | {worst:.4f} | {res.seconds:.0f} |")


if __name__ == "__main__":
    main()
