"""Detect how a phase image is encoded and rescale it to radians.

Phase images reach a BIDS dataset in several encodings:

* radians, in ``[-pi, pi)`` or ``[0, 2 pi)`` (BIDS ``Units: rad``);
* integers from the DICOM converter: dcm2niix writes Siemens phase as ``-4096..4095``
  (or ``0..4095`` with older versions), other vendors and converters use ``-2048..2047``,
  ``0..8191`` etc. The full range of ``2^n`` levels is one ``2 pi`` cycle;
* arbitrary units (BIDS ``Units: arbitrary``), e.g. ``-0.00367..0.00367`` after a
  vendor scaling: one cycle spread linearly over the stored range.

:func:`scale_phase_to_radians` recognises these from the values alone (a sidecar
``Units`` value can break ties) and returns float32 radians in ``[-pi, pi)``, together
with a one-line description for the provenance record.
"""

from __future__ import annotations

import numpy as np

_TWO_PI = 2.0 * np.pi
#: Tolerance (rad) on the limits of data that is already in radians.
_RAD_EPS = 1e-3
#: Minimum span (rad) for values within [-pi, pi] to be taken as radians without a hint.
_MIN_RAD_SPAN = 5.0
#: Minimum number of integer levels for the integer (DICOM converter) encoding.
_MIN_INT_LEVELS = 256


def wrap_to_pi(x: np.ndarray) -> np.ndarray:
    """Angles (rad) wrapped into ``[-pi, pi)``, as a new float32 array.

    The one vectorised wrap of qsm_bids (the numba unwrapper has its own scalar version).
    """
    out = (np.asarray(x, dtype=np.float32) + np.float32(np.pi)) % np.float32(_TWO_PI)
    out -= np.float32(np.pi)
    # float32 rounding just below 2*pi can land exactly on float32(pi)
    out[out >= np.float32(np.pi)] -= np.float32(_TWO_PI)
    return out


def _wrap(x: np.ndarray) -> np.ndarray:
    """Wrap float32 radians into ``[-pi, pi)`` in place (values already inside are kept)."""
    outside = (x < -np.pi) | (x >= np.pi)
    if np.any(outside):
        x[outside] = np.mod(x[outside] + np.pi, _TWO_PI) - np.pi
    # float32 rounding of values just below pi can give exactly float32(pi) >= pi
    x[x >= np.float32(np.pi)] -= np.float32(_TWO_PI)
    return x


def scale_phase_to_radians(data: np.ndarray, *, units: str = "") -> tuple[np.ndarray, str]:
    """Rescale a phase image of any common encoding to float32 radians in ``[-pi, pi)``.

    The encoding is detected from the finite values (all echoes should be passed together,
    e.g. as an (X, Y, Z, E) array, so that they share one mapping):

    1. integer-valued data spanning at least 256 levels: a DICOM converter's integers.
       The number of levels ``N`` is the smallest power of two that holds the range
       (``-N/2..N/2-1`` for signed data, ``0..N-1`` otherwise) and ``N`` levels are one
       cycle: ``phase * 2 pi / N``, wrapped;
    2. values within ``[-pi, pi]`` (tolerance 1e-3 rad) spanning more than 5 rad (or more
       than 1 rad when ``units == "rad"``): already radians (values at ``pi`` are wrapped);
    3. values within ``[0, 2 pi]`` spanning more than 5 rad: radians in ``[0, 2 pi)``,
       wrapped to ``[-pi, pi)``;
    4. otherwise arbitrary units with a range symmetric about 0 (``|min + max|`` at most
       10 % of the span): ``phase * pi / max(|min|, |max|)``; or a range starting at 0
       (``min`` within 5 % of the span from 0): ``phase * 2 pi / max``, wrapped.

    Data already scaled by a NIfTI ``scl_slope``/``scl_inter`` (as nibabel's
    ``get_fdata`` returns it) is handled the same way: e.g. ``-4096..4094`` from slope 2
    and intercept -4096 is integer-valued.

    Parameters
    ----------
    data : ndarray
        Phase values of any shape and real dtype (in the file's units). Non-finite values
        are ignored for detection and returned as 0.
    units : str, default ""
        The sidecar's ``Units`` (``"rad"`` or ``"arbitrary"``), or ``""`` if unknown. Used
        only for data within ``[-pi, pi]`` spanning 1 to 5 rad, which is kept as radians
        when ``units == "rad"`` and otherwise mapped linearly as arbitrary units (a head's
        wrapped phase spans the whole cycle, so a smaller span is rarely radians).

    Returns
    -------
    phase : float32 ndarray
        The phase in radians, in ``[-pi, pi)``, with the shape of ``data``.
    description : str
        One line saying which encoding was detected and the mapping applied, e.g.
        ``"integer phase -4096..4095 (8192 levels) rescaled to radians: phase * pi / 4096"``.

    Raises
    ------
    ValueError
        If there are no finite values, the data is constant, or its range fits none of
        the encodings above (e.g. ``100..900`` in floating point).
    """
    x = np.array(data, dtype=np.float32, copy=True)
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    if n_bad:
        x[~finite] = 0.0
        if n_bad == x.size:
            raise ValueError("phase image has no finite values")
        vals = x[finite]
    else:
        vals = x
    lo = float(vals.min())
    hi = float(vals.max())
    span = hi - lo
    if not span > 1e-12 * max(1.0, abs(hi), abs(lo)):
        raise ValueError(f"phase image is constant ({lo:g}); it cannot be a phase image")
    units = (units or "").strip().lower()
    nonfinite = f"; {n_bad} non-finite values set to 0" if n_bad else ""

    # 1. integers from a DICOM converter: 2^n levels are one cycle
    if span + 1 >= _MIN_INT_LEVELS and bool(np.all(vals == np.round(vals))):
        ilo, ihi = int(round(lo)), int(round(hi))
        levels = 1 << int(np.ceil(np.log2(ihi - ilo + 1)))
        if ilo < 0:  # signed: -N/2 .. N/2 - 1
            while ilo < -levels // 2 or ihi > levels // 2 - 1:
                levels *= 2
        else:  # unsigned: 0 .. N - 1
            while ihi > levels - 1:
                levels *= 2
        scale = np.float32(_TWO_PI / levels)
        x *= scale
        _wrap(x)
        half = levels // 2
        return x, (
            f"integer phase {ilo}..{ihi} ({levels} levels) rescaled to radians: "
            f"phase * pi / {half}" + (", wrapped to [-pi, pi)" if ilo >= 0 else "") + nonfinite
        )

    # 2. radians in [-pi, pi)
    in_pi = lo >= -np.pi - _RAD_EPS and hi <= np.pi + _RAD_EPS
    if in_pi and (span > _MIN_RAD_SPAN or (units == "rad" and span >= 1.0)):
        _wrap(x)
        desc = f"phase already in radians ({lo:.4f}..{hi:.4f}); kept"
        if span <= _MIN_RAD_SPAN:
            desc += f" (it spans only {span:.2f} rad, less than one cycle)"
        return x, desc + nonfinite

    # 3. radians in [0, 2 pi)
    if lo >= -_RAD_EPS and hi <= _TWO_PI + _RAD_EPS and span > _MIN_RAD_SPAN:
        _wrap(x)
        return x, f"phase in radians {lo:.4f}..{hi:.4f} wrapped to [-pi, pi)" + nonfinite

    # 4. arbitrary units: one cycle over the stored range
    if abs(lo + hi) <= 0.1 * span:
        amp = max(abs(lo), abs(hi))
        x *= np.float32(np.pi / amp)
        _wrap(x)
        return x, (
            f"phase in arbitrary units {lo:.6g}..{hi:.6g} rescaled to radians: "
            f"phase * pi / {amp:.6g}" + nonfinite
        )
    if 0.0 <= lo <= 0.05 * span:
        x *= np.float32(_TWO_PI / hi)
        _wrap(x)
        return x, (
            f"phase in arbitrary units {lo:.6g}..{hi:.6g} rescaled to radians: "
            f"phase * 2 pi / {hi:.6g}, wrapped to [-pi, pi)" + nonfinite
        )
    raise ValueError(
        f"cannot identify the phase encoding of values {lo:.6g}..{hi:.6g}: not radians, "
        "not integers of 2^n levels, and not a range symmetric about 0 or starting at 0"
    )
