"""Accuracy of every dipole inversion, every background removal and the full pipeline.

Usage::

    .venv/bin/python benchmarks/accuracy.py [--resolution 1.0] [--field-strengths 3 7]
        [--noise-ppm 0.001] [--qsm-forward] [--skip-full] [--only-full]
        [--phantom realistic|ideal]

``--phantom`` picks the built-in simulator (``qsm-bids simulate --phantom``): "realistic"
(default; fine grid and k-space truncation) or "ideal" (the pipeline's own kernel on the
acquired grid, the inverse crime that flatters weak regularisation).

For each built-in head phantom (one subject per field strength, 4-5 echoes, SNR 100) it
prints Markdown tables for benchmarks/RESULTS.md:

1. dipole inversion alone, given the true local field plus Gaussian noise (ppm): NRMSE,
   detrended NRMSE, HFEN, XSIM (qsm_bids.core.metrics), worst deep-grey error, run time;
2. background removal alone, given the true total field: local-field NRMSE on each
   method's own mask (intersected with the brain eroded by 3 voxels) and on one common
   region for all methods (the intersection of all their masks), run time;
3. the full participant pipeline from magnitude and phase, for each built-in recipe, and
   its NRMSE as a multiple of the NRMSE of the same inversion given the true local field.

With ``--qsm-forward`` (needs the benchmark-only package ``qsm-forward``) the same full
pipelines run on the independent simulator's ``simple`` phantom (cylinders of known
susceptibility, 3 T and 7 T), whose truth is scored the same way.
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from qsm_bids import registry
from qsm_bids.cli.participant import run_participant_level
from qsm_bids.config import Config, ExecutionSettings, WorkflowSettings, new_run_stamp
from qsm_bids.core.background.feedback import remove_with_feedback, susceptibility_field
from qsm_bids.core.kernels import b0_direction, voxel_sizes
from qsm_bids.core.linalg import one_blas_thread
from qsm_bids.core.metrics import evaluation_mask, nrmse
from qsm_bids.core.physics import hz_to_ppm
from qsm_bids.evaluate import DEEP_GREY, evaluate_maps, read_label_names
from qsm_bids.recipe import builtin_recipes, load_recipe
from qsm_bids.simulate.dataset import simulate_dataset

ECHOES = {3.0: (0.004, 0.010, 0.016, 0.022, 0.028), 7.0: (0.004, 0.010, 0.016, 0.022)}


def load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def participant_config(bids: Path, out: Path, work: Path, pipeline: str) -> Config:
    """The participant level on the simulated ``bids`` without registration or BIDS
    validation (the simulator's output is validated by the tests)."""
    return Config(
        execution=ExecutionSettings(
            bids_dir=bids,
            output_dir=out,
            work_dir=work,
            skip_bids_validation=True,
            run_stamp=new_run_stamp(),
        ),
        workflow=WorkflowSettings(pipeline=pipeline, registration=False),
    )


def _worst_dgm(metrics: dict) -> float:
    errs = [abs(v["error_ppm"]) for k, v in metrics["regions"].items() if k in DEEP_GREY]
    return max(errs) if errs else float("nan")


def _row(name: str, m: dict, seconds: float, extra: str = "") -> str:
    return (
        f"| {name} | {m['nrmse_percent']:.1f} | {m['nrmse_detrended_percent']:.1f} | "
        f"{m['hfen_percent']:.1f} | {m['xsim']:.3f} | {_worst_dgm(m):.4f} | {seconds:.1f} |" + extra
    )


HEADER = (
    "| {what} | NRMSE % | detrended NRMSE % | HFEN % | XSIM | worst DGM error (ppm) | "
    "time (s) |{extra_h}\n|---|---|---|---|---|---|---|{extra_s}"
)


def inversion_table(truth: dict, noise_ppm: float, seed: int) -> dict[str, np.ndarray]:
    """Part 1; returns each method's estimate (for the full-pipeline ratio, which compares
    the two on the same voxels)."""
    rng = np.random.default_rng(seed)
    local = truth["local_ppm"]
    brain = truth["brain"]
    noisy = (local + noise_ppm * rng.standard_normal(local.shape)).astype(np.float32) * brain
    print(f"\n#### Dipole inversion given the true local field (+{noise_ppm} ppm noise)\n")
    print(HEADER.format(what="method", extra_h="", extra_s=""))
    out = {}
    for algo in registry.algorithms("inversion"):
        func = registry.get_function("inversion", algo)
        params = registry.function_kwargs(registry.resolve("inversion", algo, {}))
        if "magnitude" in inspect.signature(func).parameters:
            params["magnitude"] = truth["magnitude"]
        t0 = time.perf_counter()
        est = func(noisy, brain, truth["voxel_size"], truth["b0"], **params)
        sec = time.perf_counter() - t0
        m = evaluate_maps(est, truth["chi"], brain, truth["labels"], truth["names"])
        out[algo] = est
        print(_row(algo, m, sec))
    return out


def background_table(truth: dict) -> None:
    """Part 2."""
    print("\n#### Background removal given the true total field\n")
    print("| method | local-field NRMSE % (own mask) | NRMSE % (common region) | time (s) |")
    print("|---|---|---|---|")
    brain = truth["brain"]
    results = {}
    for algo in registry.algorithms("background"):
        func = registry.get_function("background", algo)
        params = registry.function_kwargs(registry.resolve("background", algo, {}))
        t0 = time.perf_counter()
        est, m = func(truth["total_hz"], brain, truth["voxel_size"], truth["b0"], **params)
        results[algo] = (est, m & brain, time.perf_counter() - t0)
    common = evaluation_mask(brain, 3)
    for _, m, _ in results.values():
        common &= m
    t0 = time.perf_counter()
    est, m = recipe_background(truth, "default")
    results["default recipe: pdf + feedback passes (uses its MEDI)"] = (
        est, m & brain, time.perf_counter() - t0
    )  # fmt: skip
    for algo, (est, m, sec) in results.items():
        own = nrmse(est, truth["local_hz"], evaluation_mask(m, 3))
        shared = nrmse(est, truth["local_hz"], common)
        print(f"| {algo} | {own:.1f} | {shared:.1f} | {sec:.1f} |")


def recipe_background(truth: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A recipe's background stage with its susceptibility-feedback passes, run as the
    pipeline runs them (``pipeline.base.init_qsm_wf``) on the true total field: the first
    map from the inversion with ``preliminary_max_iter``, each pass in the linear form with
    ``feedback_max_iter`` and over-relaxed, each later map from the full inversion (the
    first-echo magnitude for MEDI; no data weights), and the local field consistent with the
    final map (one more plain linear pass), which the pipeline writes. Returns that local
    field (Hz) and its mask."""
    recipe = load_recipe(name)
    bg, inv = recipe["background"], recipe["inversion"]
    remove = registry.get_function("background", bg.algorithm)
    invert = registry.get_function("inversion", inv.algorithm)
    geometry = (truth["voxel_size"], truth["b0"])
    extra = {}
    if "magnitude" in inspect.signature(invert).parameters:
        extra["magnitude"] = truth["magnitude"]

    def chi_of(local: np.ndarray, mask: np.ndarray, choice) -> np.ndarray:
        ppm = hz_to_ppm(local, truth["field_strength"]).astype(np.float32)
        return invert(ppm, mask, *geometry, **registry.function_kwargs(choice.params), **extra)

    first, mask = remove(truth["total_hz"], truth["brain"], *geometry,
                         **registry.function_kwargs(bg.params))  # fmt: skip
    passes = int(bg.params.get(registry.FEEDBACK, 0))
    local, chi = first, None
    if passes:
        chi = chi_of(first, mask, inv.with_max_iter_from(registry.PRELIMINARY_MAX_ITER))
    feedback_kw = registry.function_kwargs(bg.with_max_iter_from(registry.FEEDBACK_MAX_ITER).params)
    for _ in range(passes):
        chi_field = susceptibility_field(
            chi, mask, *geometry, field_strength=truth["field_strength"]
        )
        local, mask = remove_with_feedback(
            remove, None, truth["brain"], *geometry, chi_field, previous=(local, mask),
            relaxation=float(bg.params[registry.FEEDBACK_RELAXATION]), first=first,
            **feedback_kw,
        )  # fmt: skip
        chi = chi_of(local, mask, inv)
    if passes:
        # the local field the pipeline writes: consistent with the final map (a plain pass)
        chi_field = susceptibility_field(
            chi, mask, *geometry, field_strength=truth["field_strength"]
        )
        local, mask = remove_with_feedback(
            remove, None, truth["brain"], *geometry, chi_field, first=first, **feedback_kw
        )
    return local, mask


def full_table(
    bids: Path,
    truth_of,
    tmp: Path,
    inversion_only: dict[str, np.ndarray],
    recipes: list[str] | None = None,
) -> None:
    """Part 3: each built-in recipe through the participant level.

    The ratio column divides the full pipeline's NRMSE by that of the same inversion given
    the true local field (part 1), both taken on the same voxels: the truth's brain mask
    intersected with the pipeline's local mask (the region the pipeline reports).
    """
    print("\n#### Full pipeline from magnitude and phase\n")
    extra = " full / inversion-only |" if inversion_only else ""
    print(HEADER.format(what="recipe", extra_h=extra, extra_s="---|" if extra else ""))
    for name in recipes or builtin_recipes():
        recipe = load_recipe(name)
        out = tmp / f"out-{name}"
        res = run_participant_level(
            participant_config(bids, out, tmp / f"w-{name}", name), recipe=recipe
        )
        if not res.succeeded:
            print(f"| {name} | failed: {res.failed} |")
            continue
        run = res.succeeded[0]
        anat = out / f"sub-{run.subject}" / "anat"
        chi = load(anat / f"sub-{run.subject}_Chimap.nii.gz")
        local_mask = load(anat / f"sub-{run.subject}_desc-local_mask.nii.gz") > 0
        truth = truth_of(run.subject)
        region = truth["brain"] & local_mask
        m = evaluate_maps(chi, truth["chi"], region, truth["labels"], truth["names"])
        ratio = ""
        inv = recipe["inversion"].algorithm
        if inv in inversion_only:
            alone = nrmse(inversion_only[inv], truth["chi"], region)
            ratio = f" {m['nrmse_percent'] / alone:.2f} ({inv}: {alone:.1f} %) |"
        print(_row(name, m, res.seconds, ratio))


def builtin_truth(bids: Path, subject: str = "01") -> dict:
    truth_dir = bids / "derivatives" / "qsm_bids-truth"
    anat = truth_dir / f"sub-{subject}" / "anat"
    img = nb.load(anat / f"sub-{subject}_Chimap.nii.gz")
    b0_t = json.loads(
        next((bids / f"sub-{subject}" / "anat").glob("*_echo-1_*mag*.json")).read_text()
    )["MagneticFieldStrength"]
    local_hz = load(anat / f"sub-{subject}_desc-local_fieldmap.nii.gz")
    mag = load(next((bids / f"sub-{subject}" / "anat").glob("*_echo-1_part-mag_*.nii*")))
    return {
        "chi": load(anat / f"sub-{subject}_Chimap.nii.gz"),
        "brain": load(anat / f"sub-{subject}_desc-brain_mask.nii.gz") > 0,
        "labels": load(anat / f"sub-{subject}_dseg.nii.gz").astype(np.int32),
        "names": read_label_names(truth_dir / "dseg.tsv"),
        "total_hz": load(anat / f"sub-{subject}_desc-total_fieldmap.nii.gz"),
        "local_hz": local_hz,
        "local_ppm": hz_to_ppm(local_hz, b0_t).astype(np.float32),
        "magnitude": mag,
        "field_strength": float(b0_t),
        "voxel_size": voxel_sizes(img.affine),
        "b0": tuple(b0_direction(img.affine)),
    }


def qsm_forward_dataset(root: Path, field_strength: float) -> tuple[Path, dict]:
    """The independent simulator's 'simple' phantom as BIDS, and its truth."""
    import qsm_forward as qf

    tissue = qf.TissueParams(
        chi=qf.generate_susceptibility_phantom(
            resolution=[100, 100, 100],
            background=0,
            large_cylinder_val=0.005,
            small_cylinder_radii=[4, 4, 4, 7],
            small_cylinder_vals=[0.05, 0.1, 0.2, 0.5],
        )
    )
    recon = qf.ReconParams(
        subject="1",
        random_seed=42,
        suffix="MEGRE",
        B0=field_strength,
        TEs=np.array(ECHOES[field_strength]),
        peak_snr=100,
    )
    bids = root / f"qsmforward-{field_strength:g}T"
    qf.generate_bids(tissue, recon, str(bids), save_field=True)
    anat = bids / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    chi = load(anat / "sub-1_Chimap.nii")
    labels = np.zeros(chi.shape, np.int32)
    names = {}
    for k, v in enumerate((0.005, 0.05, 0.1, 0.2, 0.5), start=1):
        labels[np.isclose(chi, v, atol=1e-4)] = k
        names[k] = f"chi_{v:g}"
    return bids, {
        "chi": chi,
        "brain": load(anat / "sub-1_mask.nii") > 0.5,
        "labels": labels,
        "names": names,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--field-strengths", type=float, nargs="+", default=[3.0, 7.0])
    parser.add_argument("--noise-ppm", type=float, default=0.001, help="local field noise SD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qsm-forward", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--only-full", action="store_true")
    parser.add_argument("--phantom", choices=["realistic", "ideal"], default="realistic")
    parser.add_argument(
        "--recipes", nargs="+", choices=builtin_recipes(), help="full pipelines (default: all)"
    )
    ns = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for b0 in ns.field_strengths:
            bids = simulate_dataset(
                tmp / f"bids-{b0:g}T",
                resolution_mm=ns.resolution,
                field_strength_t=b0,
                echo_times_s=ECHOES[b0],
                snr=None,  # the phantom's default (realistic 40, ideal 100)
                seed=ns.seed,
                phantom=ns.phantom,
            )
            truth = builtin_truth(bids)
            print(
                f"\n### Built-in {ns.phantom} head phantom, {ns.resolution:g} mm, {b0:g} T, "
                f"{len(ECHOES[b0])} echoes, grid {truth['chi'].shape}"
            )
            inv = {}
            if not ns.only_full:
                inv = inversion_table(truth, ns.noise_ppm, ns.seed)
                background_table(truth)
            if not ns.skip_full:
                full_table(
                    bids,
                    lambda s, b=bids: builtin_truth(b, s),
                    tmp / f"run-{b0:g}",
                    inv,
                    ns.recipes,
                )
        if ns.qsm_forward:
            for b0 in ns.field_strengths:
                bids, truth = qsm_forward_dataset(tmp, b0)
                print(f"\n### qsm-forward 'simple' phantom, {b0:g} T, grid {truth['chi'].shape}")
                full_table(bids, lambda s, t=truth: t, tmp / f"qf-{b0:g}", {}, ns.recipes)


if __name__ == "__main__":
    # as the pipeline's stage interfaces do (BLAS threads busy-wait and slow the FFTs)
    with one_blas_thread():
        main()
