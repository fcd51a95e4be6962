"""Shared pytest fixtures: simulated datasets made once per session, the shared/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ../shared folder; tests using it skip where it does not exist."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not available (a user's clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Every test runs with outside networking refused: only loopback and Unix sockets
    (the local SLURM, munge, nipype's workers) may connect. A connection anywhere else
    fails the test with a clear error, so no code path can download or phone home."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = host == "localhost"
            if not ok:
                raise OSError(f"network access attempted in a test: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
