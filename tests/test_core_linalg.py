"""The shared solvers and stencils: conjugate gradients (plain, preconditioned, with a
k-space preconditioner) against direct solutions; the fused weighted div-grad stencil
against the numpy composition of the gradient and its adjoint."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.core.inversion.common import grad_add, grad_adjoint
from qsm_bids.core.kernels import irfftn, rfftn
from qsm_bids.core.linalg import KSpacePreconditioner, conjugate_gradient
from qsm_bids.core.stencils import weighted_div_grad

SHAPE = (12, 10, 8)


def _operator(rng: np.random.Generator):
    """An SPD operator on SHAPE volumes: a positive k-space multiplier plus a positive
    diagonal, ``A = F^-1 K F + diag(w)``, and its dense matrix."""
    # 1 + the discrete Laplacian's symbol: real and even in k, so F^-1 K F is symmetric
    freqs = [np.fft.fftfreq(SHAPE[0]), np.fft.fftfreq(SHAPE[1]), np.fft.rfftfreq(SHAPE[2])]
    grids = np.meshgrid(*freqs, indexing="ij")
    k = (1.0 + sum(2.0 - 2.0 * np.cos(2 * np.pi * f) for f in grids)).astype(np.float32)
    w = (0.5 + rng.random(SHAPE)).astype(np.float32)

    def apply(p, out, p_hat=None):
        spec = rfftn(p) if p_hat is None else p_hat
        out[...] = irfftn(spec * k, s=SHAPE) + w * p

    n = int(np.prod(SHAPE))
    dense = np.empty((n, n))
    e = np.zeros(SHAPE, np.float32)
    col = np.empty(SHAPE, np.float32)
    for i in range(n):
        e.flat[i] = 1.0
        apply(e, col)
        dense[:, i] = col.ravel()
        e.flat[i] = 0.0
    return apply, dense, k


def test_conjugate_gradient_variants_solve_an_spd_system() -> None:
    rng = np.random.default_rng(0)
    apply, dense, k = _operator(rng)
    assert np.allclose(dense, dense.T, atol=1e-4)  # symmetric, as CG needs
    b = rng.standard_normal(SHAPE).astype(np.float32)
    exact = np.linalg.solve(dense, b.ravel().astype(np.float64)).reshape(SHAPE)
    kinv = (1.0 / k).astype(np.float32)  # K^-1: right for the k-space part only

    def precond(r):
        return irfftn(rfftn(r) * kinv, s=SHAPE).astype(np.float32)

    plain = conjugate_gradient(lambda p, out: apply(p, out), b, max_iter=200, tol=1e-6)
    pre = conjugate_gradient(
        lambda p, out: apply(p, out), b, max_iter=200, tol=1e-6, precond=precond
    )
    spec = conjugate_gradient(
        apply, b, max_iter=200, tol=1e-6, kspace=KSpacePreconditioner(kinv, SHAPE)
    )
    for x in (plain, pre, spec):
        assert np.linalg.norm(x - exact) / np.linalg.norm(exact) < 1e-4
    # the k-space form is the same algorithm as the callable preconditioner: same iterates
    few = dict(max_iter=2, tol=0.0)
    a2 = conjugate_gradient(lambda p, out: apply(p, out), b, precond=precond, **few)
    b2 = conjugate_gradient(apply, b, kspace=KSpacePreconditioner(kinv, SHAPE), **few)
    assert np.abs(a2 - b2).max() < 1e-4 * np.abs(a2).max()
    assert np.linalg.norm(a2 - exact) > 1e-3 * np.linalg.norm(exact)  # not converged yet
    with pytest.raises(ValueError, match="not both"):
        conjugate_gradient(
            apply, b, max_iter=1, tol=0.0, precond=precond, kspace=KSpacePreconditioner(kinv, SHAPE)
        )


def test_weighted_div_grad_matches_the_numpy_composition() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    r = [rng.random(SHAPE).astype(np.float32) for _ in range(3)]
    inv_h = [1.0, 0.8, 0.5]
    g = [np.zeros(SHAPE, np.float32) for _ in range(3)]
    grad_add(x, inv_h, g)
    for ga, ra in zip(g, r, strict=True):
        ga *= ra
    expected = grad_adjoint(g, inv_h, np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32))
    out = weighted_div_grad(x, r, inv_h, np.empty(SHAPE, np.float32))
    assert np.allclose(out, expected, atol=1e-5)
    # <x, G^T R G x> = ||sqrt(R) G x||^2 >= 0, and a constant is in the null space
    assert float((x * out).sum()) == pytest.approx(
        float(sum((ga * ga / ra).sum() for ga, ra in zip(g, r, strict=True))), rel=1e-4
    )
    const = weighted_div_grad(
        np.full(SHAPE, 3.0, np.float32), r, inv_h, np.empty(SHAPE, np.float32)
    )
    assert np.abs(const).max() < 1e-5
    with pytest.raises(ValueError, match="out"):
        weighted_div_grad(x, r, inv_h, x)


def test_a_process_that_ran_a_parallel_kernel_can_fork() -> None:
    """nipype's MultiProc forks its workers; with numba on GNU OpenMP threads a fork after a
    parallel kernel aborts the child ("fork() called from a process already using GNU
    OpenMP")."""
    import multiprocessing

    x = np.ones(SHAPE, np.float32)
    r = [x, x, x]
    weighted_div_grad(x, r, [1.0, 1.0, 1.0], np.empty(SHAPE, np.float32))
    child = multiprocessing.get_context("fork").Process(target=_kernel_in_child)
    child.start()
    child.join(60)
    assert child.exitcode == 0


def _kernel_in_child() -> None:
    x = np.ones(SHAPE, np.float32)
    out = weighted_div_grad(x, [x, x, x], [1.0, 1.0, 1.0], np.empty(SHAPE, np.float32))
    raise SystemExit(0 if np.abs(out).max() == 0 else 1)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_stage_interfaces_run_the_algorithm_on_one_blas_thread(monkeypatch) -> None:
    """OpenBLAS's idle threads busy-wait after each call and slow the FFTs that follow, so
    the stage interfaces run every algorithm with one BLAS thread, and restore the setting
    afterwards."""
    from qsm_bids.interfaces import base

    np.dot(np.ones(10), np.ones(10))  # make sure numpy's BLAS is loaded
    before = _blas_threads()
    if not before or max(before) <= 1:
        pytest.skip("BLAS runs on one thread here anyway")
    seen: list[list[int]] = []

    def algorithm(x: int) -> int:
        seen.append(_blas_threads())
        return x + 1

    monkeypatch.setattr(base.registry, "get_function", lambda stage, name: algorithm)
    monkeypatch.setattr(base.registry, "resolve", lambda stage, name, params: {})

    class Probe(base.StageInterface):
        input_spec = base.StageInputSpec
        stage = "inversion"

    assert Probe(algorithm="probe", params={}, num_threads=2).call(1) == 2
    assert seen and all(n == 1 for n in seen[0])
    assert _blas_threads() == before
