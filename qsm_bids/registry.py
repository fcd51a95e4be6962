"""The one registry of stages and their algorithms.

Each pipeline stage has a fixed calling convention (see :data:`STAGES`) and a set of
algorithms, each a pure function in :mod:`qsm_bids.core`. An algorithm's tunable parameters
are its keyword-only arguments with a default of a simple type (``int``, ``float``, ``bool``,
``str`` or a tuple of those); the recipe validator, the CLI and the provenance written into
sidecars all read them from the function signature, so a parameter is documented and
defaulted in exactly one place.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: stage -> (description, {algorithm name -> "module:function"})
STAGES: dict[str, tuple[str, dict[str, str]]] = {
    "mask": (
        "brain mask (a user mask file replaces it)",
        {
            "magnitude": "qsm_bids.core.mask:mask_from_magnitude",
            "phase_quality": "qsm_bids.core.mask:mask_from_phase",
            "magnitude_and_quality": "qsm_bids.core.mask:mask_from_magnitude_and_quality",
        },
    ),
    "unwrap": (
        "spatial and temporal phase unwrapping of all echoes (rad)",
        {
            "laplacian": "qsm_bids.core.unwrap:unwrap_laplacian",
            "region_growing": "qsm_bids.core.unwrap:unwrap_region_growing",
        },
    ),
    "combine": (
        "multi-echo combination into a total field map (Hz)",
        {
            "weighted_fit": "qsm_bids.core.echoes:combine_weighted_fit",
            "nonlinear_fit": "qsm_bids.core.echoes:combine_nonlinear_fit",
        },
    ),
    "background": (
        "background field removal: total field -> local field (Hz)",
        {
            "vsharp": "qsm_bids.core.background:vsharp",
            "pdf": "qsm_bids.core.background:pdf",
            "resharp": "qsm_bids.core.background:resharp",
            "ismv": "qsm_bids.core.background:ismv",
            "lbv": "qsm_bids.core.background:lbv",
            "none": "qsm_bids.core.background:no_background_removal",
        },
    ),
    "inversion": (
        "dipole inversion: local field (ppm) -> susceptibility (ppm)",
        {
            "tkd": "qsm_bids.core.inversion:tkd",
            "tikhonov": "qsm_bids.core.inversion:tikhonov",
            "tv_admm": "qsm_bids.core.inversion:tv_admm",
            "rts": "qsm_bids.core.inversion:rts",
            "ndi": "qsm_bids.core.inversion:ndi",
            "ilsqr": "qsm_bids.core.inversion:ilsqr",
            "medi": "qsm_bids.core.inversion:medi",
            "nltv": "qsm_bids.core.inversion:nltv",
            "sstv": "qsm_bids.core.inversion:sstv",
            "tfi": "qsm_bids.core.inversion:tfi",
            "tgv": "qsm_bids.core.inversion:tgv",
        },
    ),
    "reference": (
        "susceptibility referencing (ppm)",
        {
            "mean": "qsm_bids.core.reference:reference_mean",
            "mask": "qsm_bids.core.reference:reference_mask",
            "csf": "qsm_bids.core.reference_csf:reference_csf",
        },
    ),
    "r2star": (
        "R2* (1/s) and T2* (s) mapping from the magnitudes",
        {
            "arlo": "qsm_bids.core.relaxometry:r2star_arlo",
            "loglinear": "qsm_bids.core.relaxometry:r2star_loglinear",
        },
    ),
}

_SIMPLE = (bool, int, float, str)

#: Pipeline-level parameter of every algorithm that takes data ``weights``: whether the
#: stage receives the inverse of the multi-echo fit's field SD as weights (see
#: :func:`qsm_bids.core.quality.inverse_noise_weights`). Not passed to the function.
DATA_WEIGHTS = "data_weights"

#: Pipeline-level parameter of every background method that forms a local field (all but
#: ``none``): how many times the pipeline reruns the background removal on the total field
#: minus the field of the latest susceptibility map, then inverts again
#: (:mod:`qsm_bids.core.background.feedback`). Not passed to the function.
FEEDBACK = "dipole_feedback"

#: Pipeline-level parameter of the same methods: the over-relaxation ``w`` of each feedback
#: pass, ``x_(k+1) = x_k + w (G(x_k) - x_k)`` on the local field (1: the plain pass; see
#: :func:`qsm_bids.core.background.feedback.relax`). Not passed to the function.
FEEDBACK_RELAXATION = "feedback_relaxation"

#: Pipeline-level parameter of the background methods with a ``max_iter``: the ``max_iter``
#: of the feedback passes, which remove the background of the map's field alone (the linear
#: form of :func:`qsm_bids.core.background.feedback.remove_with_feedback`); 0 keeps the
#: method's own. Not passed to the function.
FEEDBACK_MAX_ITER = "feedback_max_iter"

#: Pipeline-level parameter of the inversions with a ``max_iter``: the ``max_iter`` of the
#: first inversion when feedback passes follow (its map only feeds the first feedback pass;
#: the last pass's map is the result); 0 keeps the method's own. Not passed to the function.
PRELIMINARY_MAX_ITER = "preliminary_max_iter"

#: Pipeline-level parameter of every inversion: run the background removal and inversion a
#: second time on the brain mask with its holes filled, and use that map in the holes
#: (strong sources; :mod:`qsm_bids.core.inversion.two_pass`). Not passed to the function.
TWO_PASS = "two_pass"

#: The pipeline-level parameters above: validated with the algorithm's, never passed to it.
PIPELINE_PARAMETERS: frozenset[str] = frozenset(
    {DATA_WEIGHTS, FEEDBACK, FEEDBACK_RELAXATION, FEEDBACK_MAX_ITER, PRELIMINARY_MAX_ITER, TWO_PASS}
)


def function_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the pipeline-level parameters: what the core function takes."""
    return {k: v for k, v in params.items() if k not in PIPELINE_PARAMETERS}


@dataclass(frozen=True)
class Parameter:
    """A tunable parameter of an algorithm: its name, default and Python type."""

    name: str
    default: Any
    kind: type

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ``TypeError``."""
        if self.kind is tuple:
            if not isinstance(value, list | tuple):
                raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
            item = type(self.default[0]) if self.default else float
            return tuple(_coerce_scalar(v, item) for v in value)
        return _coerce_scalar(value, self.kind)


def _coerce_scalar(value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")


def algorithms(stage: str) -> list[str]:
    """Names of the algorithms available for ``stage``."""
    return sorted(STAGES[stage][1])


def get_function(stage: str, algorithm: str) -> Callable[..., Any]:
    """Import and return the core function implementing ``algorithm`` for ``stage``."""
    try:
        target = STAGES[stage][1][algorithm]
    except KeyError as exc:
        raise KeyError(f"unknown algorithm {algorithm!r} for stage {stage!r}") from exc
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def parameters(stage: str, algorithm: str) -> dict[str, Parameter]:
    """Tunable parameters of an algorithm, read from its keyword-only arguments."""
    sig = inspect.signature(get_function(stage, algorithm))
    params: dict[str, Parameter] = {}
    for p in sig.parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            continue
        d = p.default
        if isinstance(d, tuple) and all(isinstance(v, _SIMPLE) for v in d):
            params[p.name] = Parameter(p.name, d, tuple)
        elif isinstance(d, _SIMPLE):
            params[p.name] = Parameter(p.name, d, type(d))
    if "weights" in sig.parameters:
        params[DATA_WEIGHTS] = Parameter(DATA_WEIGHTS, False, bool)
    if stage == "background" and algorithm != "none":
        params[FEEDBACK] = Parameter(FEEDBACK, 0, int)
        params[FEEDBACK_RELAXATION] = Parameter(FEEDBACK_RELAXATION, 1.0, float)
        if "max_iter" in params:
            params[FEEDBACK_MAX_ITER] = Parameter(FEEDBACK_MAX_ITER, 0, int)
    if stage == "inversion":
        params[TWO_PASS] = Parameter(TWO_PASS, False, bool)
        if "max_iter" in params:
            params[PRELIMINARY_MAX_ITER] = Parameter(PRELIMINARY_MAX_ITER, 0, int)
    return params


def resolve(stage: str, algorithm: str, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated by ``given``, validated and converted; raises ``ValueError``."""
    known = parameters(stage, algorithm)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for [{stage}] algorithm "
            f"{algorithm!r}; it accepts: {', '.join(sorted(known)) or 'none'}"
        )
    out = {name: p.default for name, p in known.items()}
    for name, value in given.items():
        try:
            out[name] = known[name].coerce(value)
        except TypeError as exc:
            raise ValueError(f"[{stage}] parameter {name!r}: {exc}") from exc
    for name in (FEEDBACK, FEEDBACK_MAX_ITER, PRELIMINARY_MAX_ITER):
        if out.get(name, 0) < 0:
            raise ValueError(f"[{stage}] parameter {name!r} must be >= 0, got {out[name]}")
    if FEEDBACK_RELAXATION in out and not out[FEEDBACK_RELAXATION] > 0:
        raise ValueError(
            f"[{stage}] parameter {FEEDBACK_RELAXATION!r} must be > 0, "
            f"got {out[FEEDBACK_RELAXATION]}"
        )
    return out


def call_offering(
    stage: str, algorithm: str, params: dict[str, Any], *args: Any, **offered: Any
) -> Any:
    """Call ``algorithm`` of ``stage`` with ``args``, ``params`` and the offered inputs it names.

    Every algorithm of a stage is offered the same inputs (magnitude, phase, echo times,
    data weights, R2*, ...); only those its signature names are passed, so a new algorithm
    needs no change in its callers. An offered value may be a zero-argument callable,
    evaluated only if the algorithm takes it (a volume is read from disk only when needed).
    A None value is passed only for a parameter without a default. ``weights`` are offered
    only when ``params`` set ``data_weights = true``. The pipeline-level parameters are not
    passed (:func:`function_kwargs`). Used by the nipype interfaces
    (:meth:`qsm_bids.interfaces.base.StageInterface.call_offering`) and in process by
    :func:`qsm_bids.invert.run_stage`.

    Parameters
    ----------
    stage, algorithm : str
        Registry names.
    params : dict
        Resolved parameters (:func:`resolve`).
    *args
        The stage's positional inputs.
    **offered
        Optional inputs offered to every algorithm of the stage.

    Returns
    -------
    Any
        What the algorithm returns.
    """
    func = get_function(stage, algorithm)
    signature = inspect.signature(func).parameters
    if not params.get(DATA_WEIGHTS, False):
        offered.pop("weights", None)
    kwargs: dict[str, Any] = {}
    for name, value in offered.items():
        if name not in signature:
            continue
        value = value() if callable(value) else value
        if value is not None or signature[name].default is inspect.Parameter.empty:
            kwargs[name] = value
    return func(*args, **kwargs, **function_kwargs(params))
