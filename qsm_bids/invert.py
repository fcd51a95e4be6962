"""Susceptibility from a given field map: a recipe's background, inversion and reference
stages run in-process on arrays (behind ``qsm-bids invert``; benchmarks call it too).

The stages run in the order and with the parameter handling of the participant level
(:func:`qsm_bids.pipeline.base.init_qsm_wf` and the interfaces of
:mod:`qsm_bids.interfaces.stages`); only the nipype plumbing (files between nodes) is
left out:

1. background removal (only with ``total=True``): the recipe's ``[background]`` algorithm
   on the total field, in Hz when the field strength is known (as the participant level
   runs it) and in ppm otherwise (every background method is linear in the field and
   takes any unit);
2. dipole inversion: the recipe's ``[inversion]`` algorithm on the local field in ppm;
   with ``total=True`` and the background stage's ``dipole_feedback = N > 0``, the first
   map (with the inversion's ``preliminary_max_iter``) is followed by N susceptibility-
   feedback passes (:mod:`qsm_bids.core.background.feedback`, linear form, over-relaxed by
   ``feedback_relaxation``, the background's ``max_iter`` set to ``feedback_max_iter``),
   each followed by a full inversion; the last map is the result;
3. referencing: the recipe's ``[reference]`` algorithm on the last map and its mask (a
   ``csf`` referencing that finds no CSF falls back to the mean over the mask, with a
   note, as in the participant level).

Every algorithm is taken from the recipe through :mod:`qsm_bids.registry`; each is offered
the same inputs as in the participant level and takes those its signature names: data
weights ``1 / noise`` (:func:`qsm_bids.core.quality.inverse_noise_weights`, only where the
stage sets ``data_weights = true``) and the magnitude. The two-pass inversion
(``two_pass = true``) and the phase-sign check need the raw phase and are not run here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qsm_bids import __version__, registry
from qsm_bids.core.background.feedback import remove_with_feedback, susceptibility_field
from qsm_bids.core.linalg import one_blas_thread
from qsm_bids.core.mask import combine_echoes
from qsm_bids.core.physics import hz_to_ppm, ppm_to_hz
from qsm_bids.core.quality import inverse_noise_weights
from qsm_bids.core.reference import reference_with_fallback
from qsm_bids.recipe import Recipe, StageChoice, load_recipe

__all__ = ["invert_field", "run_stage"]

log = logging.getLogger("qsm_bids")


def run_stage(choice: StageChoice, *args: Any, **offered: Any) -> Any:
    """Call the algorithm of a recipe stage with ``args`` and the ``offered`` inputs it names.

    The in-process twin of :meth:`qsm_bids.interfaces.base.StageInterface.call_offering`
    (both call :func:`qsm_bids.registry.call_offering`): the recipe's parameters are
    resolved with the algorithm's defaults (:func:`qsm_bids.registry.resolve`), the
    pipeline-level ones are dropped
    (:func:`qsm_bids.registry.function_kwargs`); an offered value is passed only if the
    function's signature names it (a zero-argument callable is evaluated only then), None
    only to a parameter without a default, and ``weights`` only when the stage sets
    ``data_weights = true``. BLAS runs on one thread inside
    (:func:`qsm_bids.core.linalg.one_blas_thread`).

    Parameters
    ----------
    choice : StageChoice
        The stage, algorithm and parameters (e.g. ``recipe["inversion"]``).
    *args
        The stage's positional inputs (e.g. ``local_field, mask, voxel_size, b0_dir``).
    **offered
        Optional inputs offered to every algorithm of the stage.

    Returns
    -------
    Any
        What the algorithm returns.
    """
    params = registry.resolve(choice.stage, choice.algorithm, dict(choice.params))
    with one_blas_thread():
        return registry.call_offering(choice.stage, choice.algorithm, params, *args, **offered)


def _weights(noise: np.ndarray | None, mask: np.ndarray) -> Callable[[], np.ndarray | None]:
    """A lazy reader of the data weights ``1 / noise`` on ``mask`` (mean 1 there)."""
    return lambda: None if noise is None else inverse_noise_weights(noise, mask)


def _as_volume(name: str, value: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, the field {shape}")
    return arr


def _check_finite(name: str, arr: np.ndarray | None, mask: np.ndarray) -> None:
    if arr is not None and not np.all(np.isfinite(arr[mask])):
        n = int(np.count_nonzero(~np.isfinite(arr[mask])))
        raise ValueError(f"{name} has {n} non-finite (NaN/Inf) voxel(s) inside the mask")


def invert_field(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    recipe: Recipe | str | Path = "default",
    magnitude: np.ndarray | None = None,
    noise_ppm: np.ndarray | None = None,
    total: bool = False,
    field_strength: float | None = None,
    *,
    reference_region: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Susceptibility (ppm) of a field map by a recipe's inversion and reference stages,
    after its background stage (with its feedback passes) when the field is a total field.

    Parameters
    ----------
    field_ppm : (X, Y, Z) array
        Field map in ppm of B0: the local (tissue) field, or with ``total=True`` the total
        field. Values outside ``mask`` are ignored (set to 0, as in the participant level).
        The stages get float32; float64 is kept until the conversion to Hz.
    mask : (X, Y, Z) array
        Where the field is valid (non-zero = inside); must not be empty.
    voxel_size : 3 floats
        Voxel edge lengths along the array axes (mm), e.g.
        :func:`qsm_bids.core.kernels.voxel_sizes` of the affine.
    b0_dir : 3 floats
        B0 direction in voxel-index space (normalised here), e.g.
        :func:`qsm_bids.core.kernels.b0_direction` of the affine; ``(0, 0, 1)`` when B0
        runs along the third array axis.
    recipe : Recipe, str or Path, default "default"
        A loaded recipe, or a built-in name or TOML path for
        :func:`qsm_bids.recipe.load_recipe`. Its ``[background]`` (with ``total``),
        ``[inversion]`` and ``[reference]`` stages run; the others are ignored.
    magnitude : (X, Y, Z) array or None, default None
        Magnitude image (any scale), offered to the algorithms that use one (e.g. MEDI's
        edge mask, CSF referencing).
    noise_ppm : (X, Y, Z) array or None, default None
        Standard deviation of the field (ppm; any unit gives the same weights, which are
        normalised). Offered as data weights ``1 / noise`` to the stages that set
        ``data_weights = true``.
    total : bool, default False
        ``field_ppm`` is the total field: run the background stage first.
    field_strength : float or None, default None
        B0 (T). Given, background removal and the feedback passes run in Hz, as in the
        participant level; None runs them in ppm (the methods are linear). The inversion
        and referencing do not depend on it.
    reference_region : (X, Y, Z) array or None, default None
        Reference region for the recipe's ``[reference] algorithm = "mask"``.

    Returns
    -------
    chi_ppm : (X, Y, Z) float32 array
        Referenced susceptibility (ppm), zero outside the final mask (the mask itself, or
        the background method's possibly eroded mask).
    provenance : dict
        JSON-ready record for a sidecar, in the form of the participant level's Chimap
        sidecar: ``Pipeline`` (recipe name), ``Stages`` (``{stage: {"Algorithm",
        "Parameters"}}`` of every stage that ran), ``B0Direction`` (voxel space),
        ``VoxelSize`` (mm), ``MagneticFieldStrength`` (T, when given),
        ``BackgroundFieldUnit`` (with ``total``), ``FeedbackPasses``, ``MaskVoxels``
        (voxels of the final mask), ``ProcessingNotes`` (when any), ``SoftwareVersion``
        and ``Seconds`` (run time).

    Raises
    ------
    ValueError
        Arrays of different shapes or not 3D, an empty mask, non-finite values inside the
        mask, a bad voxel size, B0 direction or field strength, or a ``mask`` referencing
        without ``reference_region``.
    qsm_bids.errors.RecipeError
        ``recipe`` is a name or path that does not load.
    """
    start = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    # float64 input stays float64 until it is converted to the background stage's unit
    # (a field read in Hz then converts back to the file's own values)
    field = np.asarray(field_ppm)
    if field.dtype != np.float64:
        field = field.astype(np.float32)
    if field.ndim != 3:
        raise ValueError(f"the field must be a 3D array, got shape {field.shape}")
    inside = np.asarray(mask) != 0
    if inside.shape != field.shape:
        raise ValueError(f"the mask has shape {inside.shape}, the field {field.shape}")
    if not inside.any():
        raise ValueError("the mask is empty")
    mag = _as_volume("the magnitude", magnitude, field.shape)
    noise = _as_volume("the noise map", noise_ppm, field.shape)
    region = None if reference_region is None else np.asarray(reference_region) != 0
    if region is not None and region.shape != field.shape:
        raise ValueError(f"the reference region has shape {region.shape}, the field {field.shape}")
    for name, arr in (("the field", field), ("the magnitude", mag), ("the noise map", noise)):
        _check_finite(name, arr, inside)
    vox = tuple(float(v) for v in voxel_size)
    if len(vox) != 3 or not all(np.isfinite(v) and v > 0 for v in vox):
        raise ValueError(f"voxel_size must be 3 positive lengths (mm), got {voxel_size}")
    b = np.asarray(b0_dir, dtype=np.float64)
    if b.shape != (3,) or not np.all(np.isfinite(b)) or not np.linalg.norm(b) > 0:
        raise ValueError(f"b0_dir must be 3 finite numbers, not all zero; got {b0_dir}")
    b0 = tuple(float(v) for v in b / np.linalg.norm(b))
    if field_strength is not None and not (np.isfinite(field_strength) and field_strength > 0):
        raise ValueError(f"field_strength must be a positive number of tesla, got {field_strength}")
    fs = None if field_strength is None else float(field_strength)
    if recipe["reference"].algorithm == "mask" and region is None:
        raise ValueError("the recipe's [reference] algorithm 'mask' needs a reference region")

    notes: list[str] = []
    # outside the mask the participant level's fields are 0 (so are non-finite values
    # there), and a magnitude's non-finite voxels are 0 as on loading
    field = np.where(inside, field, np.float32(0))
    if mag is not None:
        mag = np.where(np.isfinite(mag), mag, np.float32(0))
    inversion = recipe["inversion"]
    if inversion.params.get(registry.TWO_PASS, False):
        notes.append(
            "the recipe's two_pass = true was not run: qsm-bids invert inverts once, on the "
            "given mask"
        )
    stages_run = ["inversion", "reference"]
    feedback = 0
    if total:
        background = recipe["background"]
        stages_run.insert(0, "background")
        feedback = int(background.params.get(registry.FEEDBACK, 0))
        if fs is None:
            to_bg, from_bg, bg_unit = (lambda x: x), (lambda x: x), "ppm"
        else:
            to_bg = lambda x: ppm_to_hz(x, fs)  # noqa: E731
            from_bg = lambda x: hz_to_ppm(x, fs)  # noqa: E731
            bg_unit = "Hz"
        total_bg = np.asarray(to_bg(field), dtype=np.float32)
        bg_weights = _weights(noise, inside)
        log.info("background removal: %s (%s)", background.algorithm, bg_unit)
        local_bg, local_mask = run_stage(background, total_bg, inside, vox, b0, weights=bg_weights)
        local_mask = np.asarray(local_mask, bool)
        first_bg = np.where(local_mask, local_bg, 0).astype(np.float32)
        if not local_mask.any():
            raise ValueError(f"background removal ({background.algorithm}) left an empty mask")
        # the first map only feeds the first feedback pass: it may be cheaper
        first_inv = (
            inversion.with_max_iter_from(registry.PRELIMINARY_MAX_ITER) if feedback else inversion
        )
        chi = _invert(first_inv, from_bg(first_bg), local_mask, vox, b0, mag, noise)
        passes = background.with_max_iter_from(registry.FEEDBACK_MAX_ITER)
        relaxation = float(passes.params[registry.FEEDBACK_RELAXATION]) if feedback else 1.0
        previous = (first_bg, local_mask)
        for i in range(1, feedback + 1):
            log.info("susceptibility-feedback pass %d of %d", i, feedback)
            chi_field = susceptibility_field(chi, previous[1], vox, b0, field_strength=fs)
            local_bg, local_mask = remove_with_feedback(
                lambda f, *a: run_stage(passes, f, *a, weights=bg_weights),
                None,
                inside,
                vox,
                b0,
                chi_field,
                previous=previous,
                relaxation=relaxation,
                first=first_bg,
            )
            local_mask = np.asarray(local_mask, bool)
            local_bg = np.where(local_mask, local_bg, 0).astype(np.float32)
            chi = _invert(inversion, from_bg(local_bg), local_mask, vox, b0, mag, noise)
            previous = (local_bg, local_mask)
    else:
        local_mask = inside
        chi = _invert(inversion, field.astype(np.float32), local_mask, vox, b0, mag, noise)

    reference = recipe["reference"]
    log.info("referencing: %s", reference.algorithm)
    chi_unreferenced = chi
    chi, note = reference_with_fallback(
        lambda: run_stage(
            reference,
            chi_unreferenced,
            local_mask,
            region=region,
            r2star=None,
            magnitude=mag,
            voxel_size=vox,
        ),
        reference.algorithm,
        chi_unreferenced,
        local_mask,
        region=region,
    )
    if note:
        notes.append(note)
    chi = np.where(local_mask, np.asarray(chi, np.float32), np.float32(0)).astype(np.float32)

    provenance: dict[str, Any] = {
        "Pipeline": recipe.name,
        "Stages": {s: recipe[s].provenance() for s in stages_run},
        "B0Direction": list(b0),
        "VoxelSize": list(vox),
    }
    if fs is not None:
        provenance["MagneticFieldStrength"] = fs
    if total:
        provenance["BackgroundFieldUnit"] = bg_unit
        provenance["FeedbackPasses"] = feedback
    provenance["MaskVoxels"] = int(np.count_nonzero(local_mask))
    if notes:
        provenance["ProcessingNotes"] = notes
    provenance["SoftwareVersion"] = f"qsm_bids {__version__}"
    provenance["Seconds"] = round(time.perf_counter() - start, 3)
    return chi, provenance


def _invert(
    choice: StageChoice,
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: tuple[float, float, float],
    b0_dir: tuple[float, float, float],
    magnitude: np.ndarray | None,
    noise: np.ndarray | None,
) -> np.ndarray:
    """The inversion stage as :class:`qsm_bids.interfaces.stages.DipoleInversion` runs it:
    the local field in ppm (float32), the data weights from the noise on the local mask,
    the echo-combined magnitude."""
    log.info("dipole inversion: %s", choice.algorithm)
    chi = run_stage(
        choice,
        np.asarray(local_ppm, dtype=np.float32),
        mask,
        voxel_size,
        b0_dir,
        weights=_weights(noise, mask),
        magnitude=lambda: None if magnitude is None else combine_echoes(magnitude, "rss"),
    )
    return np.asarray(chi, dtype=np.float32)
