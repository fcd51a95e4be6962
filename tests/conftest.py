"""Shared pytest fixtures: simulated datasets made once per session, the shared/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Keep ``--dist loadgroup`` (``make test``) grouping by ``xdist_group``.

    pytest-xdist tags a grouped test by appending ``@group`` to ``item._nodeid``, which
    pytest 9.2 no longer reads (its node ids are structured, ``item._id``): the groups
    silently fall apart, the tests of one module run on both workers and each worker
    builds the module's fixtures again (the e2e pipeline run twice). pytest-xdist issue
    #1386, open as of 2026-12. Runs after xdist's hook; a no-op where the tag took effect
    (older pytest) or without loadgroup."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        tagged = item.__dict__.get("_nodeid")
        if isinstance(tagged, str) and tagged != item.nodeid and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(tagged)


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
