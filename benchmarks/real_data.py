"""Real-data accuracy: every dipole inversion on the 2016 QSM reconstruction challenge.

Usage::

    .venv/bin/python benchmarks/real_data.py [--data ../shared/data/challenge-2016]
        [--out bench_real] [--algorithms tkd tv_admm ...] [--no-recipes] [--no-figures]

The challenge subject (Langkammer et al., MRM 2018;79:1661; README in the data folder):
one healthy volunteer at 3 T (B0 2.8936 T along the third array axis), 1.06 mm isotropic,
the local field already background-removed (ppm), a brain mask, and two references that
no single-orientation map can reach: chi_33 of susceptibility tensor imaging (12
orientations) and COSMOS (5 orientations); they differ from each other by about 50 %
NRMSE. It tests dipole inversion and referencing on a real brain with its noise,
anisotropy and microstructure; it cannot test unwrapping, echo combination or background
removal.

Two sets of maps are made:

1. every registered inversion that takes a local field (``sstv`` and ``tfi`` start from
   the total field, which the challenge does not give) at its own defaults;
2. every built-in recipe's inversion and referencing, through
   :func:`qsm_bids.invert.invert_field`, the function behind ``qsm-bids invert``: what a
   user gets from ``qsm-bids invert localfield_ppm.nii.gz mask.nii.gz out.nii.gz --unit
   ppm --pipeline NAME``, including any automatic regularisation choice.

Each map is scored over the challenge mask as the challenge did (both maps demeaned):
NRMSE against chi_33 and COSMOS, HFEN (LoG sigma 1.5 voxels), XSIM (after shifting the map
to the reference's mean), the slope of the map regressed on chi_33 (over-smoothing lowers
the NRMSE and the slope together: report both), the no-reference streaking index of
:func:`qsm_bids.core.streaking.streaking_index` (also for the references), and the mean of
the 11 evaluation regions against chi_33's. The published errors on this subject are
printed beside them. Results: a Markdown table on stdout, ``results.json`` and, unless
``--no-figures``, ``slices.png`` (the three central slices of every map) in ``--out``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from qsm_bids import registry
from qsm_bids.core.linalg import one_blas_thread
from qsm_bids.core.metrics import hfen, linear_fit, nrmse, xsim
from qsm_bids.core.streaking import streaking_index
from qsm_bids.recipe import builtin_recipes, load_recipe

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "challenge-2016"

#: Published errors on this subject against chi_33 (the SNU-LIST/QSMnet table, the
#: challenge's RMSE): name -> (NRMSE %, HFEN %). Their "TKD" is truncation to zero (TSVD)
#: at 0.19: scored here, ``tkd``-style TSVD gives 86.4 %.
PUBLISHED: dict[str, tuple[float, float]] = {
    "TKD (published)": (86.5, 82.0),
    "CFL2 (published)": (81.2, 75.5),
    "QSMnet (published)": (66.8, 67.0),
    "QSMnet+ (published)": (65.1, 65.0),
}

#: Inversions that need the total field (not given by the challenge).
TOTAL_FIELD_ONLY = ("sstv", "tfi")


def load_challenge(data_dir: Path) -> dict[str, Any]:
    """The challenge's field (ppm), mask, references (ppm) and evaluation labels."""

    def read(name: str) -> tuple[np.ndarray, nb.Nifti1Image]:
        img = nb.load(data_dir / name)
        return np.asarray(img.dataobj, dtype=np.float32), img

    field, img = read("localfield_ppm.nii.gz")
    mask = read("mask.nii.gz")[0] > 0
    return {
        "field": field,
        "mask": mask,
        "chi_33": read("chi_33.nii.gz")[0],
        "cosmos": read("chi_cosmos.nii.gz")[0],
        "labels": read("evaluation_labels.nii.gz")[0].astype(np.int16),
        "voxel_size": tuple(float(v) for v in img.header.get_zooms()[:3]),
        "b0_dir": (0.0, 0.0, 1.0),
        "image": img,
    }


def score(chi: np.ndarray, ch: dict[str, Any]) -> dict[str, Any]:
    """Every measure of one map (ppm) on the challenge mask."""
    m, c33, cos = ch["mask"], ch["chi_33"], ch["cosmos"]
    x = np.where(np.isfinite(chi), chi, 0).astype(np.float32)
    shifted = x - x[m].mean() + c33[m].mean()
    regions = {}
    for label in np.unique(ch["labels"][m]):
        if label == 0:
            continue
        sel = (ch["labels"] == label) & m
        regions[int(label)] = (
            float(x[sel].mean() - x[m].mean()),
            float(c33[sel].mean() - c33[m].mean()),
        )
    region_est = np.array([v[0] for v in regions.values()])
    region_ref = np.array([v[1] for v in regions.values()])
    return {
        "nrmse_chi33": nrmse(x, c33, m),
        "nrmse_cosmos": nrmse(x, cos, m),
        "hfen_chi33": hfen(x, c33, m),
        "hfen_cosmos": hfen(x, cos, m),
        "xsim_chi33": xsim(shifted, c33, m),
        "slope_chi33": linear_fit(c33[m], x[m])[0],
        "region_slope_chi33": linear_fit(region_ref, region_est)[0],
        "region_rmse_ppb": float(1e3 * np.sqrt(np.mean((region_est - region_ref) ** 2))),
        "streaking": streaking_index(x, m, ch["voxel_size"], ch["b0_dir"]),
        "regions": regions,
    }


def algorithm_maps(ch: dict[str, Any], names: list[str] | None):
    """Yield ``(name, chi, seconds)`` for each registered inversion at its defaults."""
    for alg in registry.algorithms("inversion"):
        if alg in TOTAL_FIELD_ONLY or (names and alg not in names):
            continue
        func = registry.get_function("inversion", alg)
        kwargs = {}
        if "magnitude" in inspect.signature(func).parameters:
            kwargs["magnitude"] = None  # the challenge gives no magnitude
        t0 = time.perf_counter()
        chi = func(ch["field"], ch["mask"], ch["voxel_size"], ch["b0_dir"], **kwargs)
        yield f"{alg} (defaults)", chi, time.perf_counter() - t0


def recipe_maps(ch: dict[str, Any], recipes: list[str]):
    """Yield ``(name, chi, seconds, provenance)`` for each recipe, as ``qsm-bids invert``."""
    from qsm_bids.invert import invert_field

    for name in recipes:
        recipe = load_recipe(name)
        t0 = time.perf_counter()
        chi, prov = invert_field(
            ch["field"],
            ch["mask"],
            ch["voxel_size"],
            ch["b0_dir"],
            recipe,
            field_strength=2.8936,
        )
        yield f"recipe {name}", chi, time.perf_counter() - t0, prov


def figure(maps: dict[str, np.ndarray], mask: np.ndarray, path: Path) -> None:
    """Axial, coronal and sagittal central slices of every map, -0.1..0.1 ppm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [s // 2 for s in mask.shape]
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.5 * len(maps)), squeeze=False)
    for row, (name, chi) in enumerate(maps.items()):
        x = np.where(mask, chi - chi[mask].mean(), 0)
        for col, sl in enumerate((x[:, :, c[2]], x[:, c[1], :], x[c[0], :, :])):
            ax = axes[row, col]
            ax.imshow(np.rot90(sl), cmap="gray", vmin=-0.1, vmax=0.1)
            ax.set_axis_off()
        axes[row, 0].set_title(name, loc="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(rows: list[tuple[str, dict[str, Any], float]]) -> str:
    """Markdown table of the scores, the published numbers last."""
    head = (
        "| map | NRMSE vs chi_33 (%) | vs COSMOS (%) | HFEN vs chi_33 (%) | XSIM | "
        "slope vs chi_33 | region slope | region RMSE (ppb) | streaking | time (s) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, s, sec in rows:
        lines.append(
            f"| {name} | {s['nrmse_chi33']:.1f} | {s['nrmse_cosmos']:.1f} | "
            f"{s['hfen_chi33']:.1f} | {s['xsim_chi33']:.3f} | {s['slope_chi33']:.2f} | "
            f"{s['region_slope_chi33']:.2f} | {s['region_rmse_ppb']:.1f} | "
            f"{s['streaking']:.2f} | {sec:.1f} |"
        )
    for name, (n, h) in PUBLISHED.items():
        lines.append(f"| {name} | {n:.1f} | | {h:.1f} | | | | | | |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="challenge-2016 folder")
    p.add_argument("--out", type=Path, default=Path("bench_real"), help="output folder")
    p.add_argument("--algorithms", nargs="*", default=None, help="subset of inversions")
    p.add_argument("--recipes", nargs="*", default=None, help="subset of recipes")
    p.add_argument("--no-algorithms", action="store_true", help="skip the defaults table")
    p.add_argument("--no-recipes", action="store_true", help="skip the recipes")
    p.add_argument("--no-figures", action="store_true", help="no slices.png")
    ns = p.parse_args(argv)
    if not (ns.data / "localfield_ppm.nii.gz").exists():
        p.error(f"{ns.data}: no localfield_ppm.nii.gz (the 2016 challenge folder)")
    ch = load_challenge(ns.data)
    ns.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict[str, Any], float]] = []
    maps: dict[str, np.ndarray] = {}
    results: dict[str, Any] = {}
    for ref in ("chi_33", "cosmos"):
        s = score(ch[ref], ch)
        rows.append((f"reference {ref}", s, 0.0))
        maps[ref] = ch[ref]
    with one_blas_thread():
        runs = []
        if not ns.no_recipes:
            runs += list(recipe_maps(ch, ns.recipes or builtin_recipes()))
        if not ns.no_algorithms:
            runs += [(n, c, t, None) for n, c, t in algorithm_maps(ch, ns.algorithms)]
        for name, chi, sec, prov in runs:
            s = score(chi, ch)
            rows.append((name, s, sec))
            maps[name] = chi
            results[name] = {"scores": s, "seconds": sec, "provenance": prov}
            print(
                f"{name}: NRMSE {s['nrmse_chi33']:.1f} / {s['nrmse_cosmos']:.1f} %, slope "
                f"{s['slope_chi33']:.2f}, streaking {s['streaking']:.2f} ({sec:.1f} s)",
                flush=True,
            )
    md = table(rows)
    print(md)
    (ns.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (ns.out / "table.md").write_text(md + "\n")
    if not ns.no_figures:
        figure(maps, ch["mask"], ns.out / "slices.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
