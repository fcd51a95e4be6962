"""Time and peak memory of each stage, and of the whole participant pipeline.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py [--resolution 1.0] [--pipeline default]

1. Simulates a head-phantom dataset (default 1 mm, about 180x220x180, 4 echoes).
2. Runs each stage's core function in this process on the simulated data and prints its
   wall time, CPU time and peak traced memory (numpy allocations, via tracemalloc), and the
   time as a multiple of one complex64 3D FFT of the grid.
3. Runs the whole participant pipeline through the command line (nipype MultiProc) in a
   child process and prints its wall time and peak resident memory (the largest process).
"""

from __future__ import annotations

import argparse
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--skip-cli", action="store_true", help="only the per-stage timings")
    ns = parser.parse_args()
    recipe = load_recipe(ns.pipeline)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        bids = simulate_dataset(tmp / "bids", subjects=1, resolution_mm=ns.resolution)
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
        print(f"{'stage':<28}{'wall':>10}{'cpu':>10}{'peak':>11}{'':>12}")

        def stage(name):
            choice = recipe[name]
            func = registry.get_function(name, choice.algorithm)
            return f"{name} ({choice.algorithm})", lambda *a, **k: func(*a, **k, **choice.params)

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

        if ns.skip_cli:
            return
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "qsm_bids.cli.main", str(bids), str(tmp / "out"),
               "participant", "-w", str(tmp / "work"), "--pipeline", ns.pipeline]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        print(f"whole participant pipeline (CLI, MultiProc): {wall:.1f} s, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
