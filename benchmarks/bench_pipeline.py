"""Time and peak memory of each stage, and of the whole participant pipeline.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py [--resolutions 1 1.5 2]
        [--pipeline default] [--skip-cli] [--throughput 8]

For each resolution:

1. Simulates a head-phantom dataset (1 mm: about 180x220x180, 4 echoes).
2. Runs each stage's core function in this process on the simulated data and prints its
   wall time, CPU time and peak traced memory (numpy allocations, via tracemalloc), and the
   time as a multiple of one complex64 3D FFT of the grid measured in the same run.
3. Runs the whole participant pipeline through the command line (nipype MultiProc) in a
   child process, without and with the registration to the template and the regional
   statistics, and prints wall time and peak resident memory (the largest process).

Then a table of how time and memory grow with voxels x echoes, and, with
``--throughput N``, N simulated participants at 2 mm through one MultiProc run on all
cores: participants per hour.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from qsm_bids import registry
from qsm_bids.bids.layout import find_runs
from qsm_bids.bids.load import load_run
from qsm_bids.core import kernels
from qsm_bids.core.linalg import one_blas_thread
from qsm_bids.core.mask import combine_echoes
from qsm_bids.core.physics import hz_to_ppm
from qsm_bids.recipe import load_recipe
from qsm_bids.simulate.dataset import simulate_dataset


def measure(label: str, fft_s: float, func, *args, **kwargs):
    """Run ``func`` once; print wall, CPU, peak traced memory; return its result."""
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{label:<28}{wall:>8.2f} s{cpu:>8.2f} s{peak / 1024**3:>8.2f} GB{wall / fft_s:>9.0f} x FFT"
    )
    return out


def cli_run(bids: Path, tmp: Path, pipeline: str, *extra: str) -> tuple[float, float]:
    """Wall time (s) and peak RSS (GB) of the participant level in a child process."""
    t0 = time.perf_counter()
    name = "-".join(["out", *extra]).replace("--", "")
    cmd = [sys.executable, "-m", "qsm_bids.cli.main", str(bids), str(tmp / name), "participant",
           "-w", str(tmp / f"work-{name}"), "--pipeline", pipeline, *extra]  # fmt: skip
    # A small launcher process runs the command and reports its children's peak RSS: a
    # child forked straight from this (large) process would inherit our high-water mark.
    launcher = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher, *cmd], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    return wall, int(done.stdout.split()[-1]) / 1024**2


def bench_resolution(
    resolution: float, recipe, pipeline: str, skip_cli: bool, cli_only: bool = False
) -> dict:
    """Per-stage and whole-pipeline timings at one resolution; returns a summary row."""
    row: dict = {"resolution": resolution}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        print(f"\n## {resolution:g} mm")
        bids = simulate_dataset(tmp / "bids", subjects=1, resolution_mm=resolution)
        print(f"simulated dataset in {time.perf_counter() - t0:.1f} s")
        run = find_runs(bids)[0]
        data = load_run(run)
        shape = data.phase.shape
        x = np.zeros(shape[:3], np.complex64)
        kernels.fftn(x)
        t0 = time.perf_counter()
        for _ in range(3):
            kernels.fftn(x)
        fft_s = (time.perf_counter() - t0) / 3
        print(f"grid {shape}, voxel {data.voxel_size} mm; one complex64 FFT: {fft_s * 1e3:.0f} ms")
        row.update(voxels=int(np.prod(shape[:3])), echoes=int(shape[3]), fft_s=fft_s)
        if cli_only:
            del data
            wall, peak = cli_run(bids, tmp, pipeline, "--no-registration")
            print(f"whole participant pipeline (CLI): {wall:.1f} s, peak RSS {peak:.2f} GB")
            row.update(wall=wall, peak=peak)
            return row
        print(f"{'stage':<28}{'wall':>10}{'cpu':>10}{'peak':>11}{'':>12}")

        mag_rss = combine_echoes(data.magnitude, "rss")

        def stage(name):
            choice = recipe[name]
            func = registry.get_function(name, choice.algorithm)
            params = registry.function_kwargs(choice.params)
            if name == "inversion" and "magnitude" in inspect.signature(func).parameters:
                params["magnitude"] = mag_rss
            return f"{name} ({choice.algorithm})", lambda *a, **k: func(*a, **k, **params)

        vs, te = data.voxel_size, data.echo_times
        label, f = stage("mask")
        mask = measure(label, fft_s, f, data.magnitude, vs)
        label, f = stage("unwrap")
        unwrapped = measure(label, fft_s, f, data.phase, data.magnitude, mask, te, vs)
        label, f = stage("combine")
        field, _ = measure(label, fft_s, f, unwrapped, data.magnitude, mask, te, vs)
        label, f = stage("background")
        local, local_mask = measure(label, fft_s, f, field, mask, vs, tuple(data.b0_dir))
        label, f = stage("inversion")
        local_ppm = hz_to_ppm(local, data.field_strength).astype(np.float32)
        chi = measure(label, fft_s, f, local_ppm, local_mask, vs, tuple(data.b0_dir))
        label, f = stage("reference")
        measure(label, fft_s, f, chi, local_mask)
        label, f = stage("r2star")
        measure(label, fft_s, f, data.magnitude, te, mask)
        del data, unwrapped, field, local, chi

        if skip_cli:
            return row
        wall, peak = cli_run(bids, tmp, pipeline, "--no-registration")
        print(f"whole participant pipeline (CLI, MultiProc): {wall:.1f} s, peak RSS {peak:.2f} GB")
        wall_r, peak_r = cli_run(bids, tmp, pipeline)
        print(
            f"  with registration + regional statistics: {wall_r:.1f} s "
            f"(+{wall_r - wall:.1f} s), peak RSS {peak_r:.2f} GB"
        )
        row.update(wall=wall, peak=peak, wall_reg=wall_r, peak_reg=peak_r)
    return row


def throughput(n: int, pipeline: str) -> None:
    """``n`` participants at 2 mm through one MultiProc run on all cores."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bids = simulate_dataset(tmp / "bids", subjects=n, resolution_mm=2.0)
        for extra in (("--no-registration",), ()):
            wall, peak = cli_run(bids, tmp, pipeline, *extra)
            what = "without" if extra else "with"
            print(
                f"\nthroughput, {n} participants at 2 mm, MultiProc on all cores, {what} "
                f"registration: {wall:.0f} s, {3600 * n / wall:.0f} participants/hour, "
                f"peak RSS {peak:.2f} GB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--skip-cli", action="store_true", help="only the per-stage timings")
    parser.add_argument("--throughput", type=int, default=0, metavar="N")
    parser.add_argument(
        "--cli-only", action="store_true", help="only the whole pipeline without registration"
    )
    ns = parser.parse_args()
    recipe = load_recipe(ns.pipeline)
    rows = [
        bench_resolution(r, recipe, ns.pipeline, ns.skip_cli, ns.cli_only) for r in ns.resolutions
    ]
    if not ns.skip_cli and len(rows) > 1:
        print("\n## Scaling (relative to the coarsest grid)\n")
        print("| voxel (mm) | voxels x echoes | time (s) | peak RSS (GB) | time ratio | "
              "memory ratio | size ratio |\n|---|---|---|---|---|---|---|")  # fmt: skip
        base = rows[-1]
        for r in rows:
            size = r["voxels"] * r["echoes"] / (base["voxels"] * base["echoes"])
            print(
                f"| {r['resolution']:g} | {r['voxels'] * r['echoes'] / 1e6:.1f} M | "
                f"{r['wall']:.1f} | {r['peak']:.2f} | {r['wall'] / base['wall']:.2f} | "
                f"{r['peak'] / base['peak']:.2f} | {size:.2f} |"
            )
    if ns.throughput:
        throughput(ns.throughput, ns.pipeline)


if __name__ == "__main__":
    # as the pipeline's stage interfaces do (BLAS threads busy-wait and slow the FFTs)
    with one_blas_thread():
        main()
