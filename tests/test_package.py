"""Package-level set-up: no network by default, a writable numba cache everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import qsm_bids


def test_nipype_telemetry_is_off():
    assert os.environ.get("NIPYPE_NO_ET") == "1"


def test_unwritable_numba_cache_dir_falls_back_to_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    qsm_bids._ensure_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")  # writable: kept
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/proc/qsm_bids_cannot_write_here")
    qsm_bids._ensure_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"].startswith(tempfile.gettempdir())
    assert "qsm_bids-numba-" in os.environ["NUMBA_CACHE_DIR"]


def test_unwrapper_imports_with_an_unwritable_cache_setting():
    env = dict(os.environ, NUMBA_CACHE_DIR="/proc/qsm_bids_cannot_write_here")
    code = (
        "import qsm_bids.core.unwrap as u; import numpy as np; "
        "print(u.region_growing_unwrap_3d(np.zeros((4, 4, 4), np.float32)).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(4, 4, 4)" in out.stdout
