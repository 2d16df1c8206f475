"""otdiff.ot.multimarginal: multi-marginal entropic OT over ott-jax's MMSinkhorn.

References used here: the cost tensor rebuilt by a direct loop over all index tuples, a float64
NumPy multi-marginal Sinkhorn (same update order), the primal objective recomputed from the
coupling, the ordinary two-marginal Sinkhorn of ``otdiff.ot.solve``, and the exact scaling law
of the problem in ``cost_scale``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces
from ott.geometry import costs
from scipy.special import logsumexp

from otdiff import config, ot
from otdiff.ot import multimarginal as mm


def clouds(sizes=(5, 6, 4), d=2, seed=0):
    rng = np.random.default_rng(config.seed(seed))
    return tuple(
        (rng.standard_normal((n, d)) * 0.7 + i).astype(np.float32) for i, n in enumerate(sizes)
    )


def weights(n, seed):
    w = np.random.default_rng(config.seed(seed)).uniform(0.5, 1.5, n)
    return (w / w.sum()).astype(np.float32)


def direct_cost_tensor(xs, cost=lambda u, v: np.sum((u - v) ** 2)):
    xs = [np.asarray(x, np.float64) for x in xs]
    C = np.zeros([len(x) for x in xs])
    for index in itertools.product(*[range(len(x)) for x in xs]):
        C[index] = sum(
            cost(xs[i][index[i]], xs[j][index[j]])
            for i in range(len(xs))
            for j in range(i + 1, len(xs))
        )
    return C


def numpy_mm_sinkhorn(C, a_s, eps, n_sweeps=3000):
    """Float64 multi-marginal Sinkhorn: P = exp((f1 + ... + fk - C) / eps), f_l updated in turn."""
    k = C.ndim
    fs = [np.zeros(C.shape[ell]) for ell in range(k)]

    def tensor_sum(fs):
        total = np.zeros(C.shape)
        for ell, f in enumerate(fs):
            shape = [1] * k
            shape[ell] = -1
            total = total + f.reshape(shape)
        return total

    for _ in range(n_sweeps):
        for ell in range(k):
            axes = tuple(i for i in range(k) if i != ell)
            lse = logsumexp((tensor_sum(fs) - C) / eps, axis=axes)
            fs[ell] = fs[ell] + eps * np.log(a_s[ell]) - eps * lse
    return fs, np.exp((tensor_sum(fs) - C) / eps)


# -- the cost tensor ----------------------------------------------------------------------------


def test_cost_tensor_matches_a_direct_loop():
    xs = clouds()
    C = np.asarray(mm.cost_tensor(xs))
    np.testing.assert_allclose(C, direct_cost_tensor(xs), rtol=1e-5, atol=1e-5)


def test_cost_tensor_other_cost_and_scale():
    xs = clouds(sizes=(4, 3, 5, 2), d=3, seed=1)
    C = np.asarray(mm.cost_tensor(xs, costs.Euclidean(), cost_scale=0.25))
    ref = 0.25 * direct_cost_tensor(xs, lambda u, v: np.linalg.norm(u - v))
    assert C.shape == (4, 3, 5, 2)
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5)


def test_cost_tensor_accepts_a_stacked_array():
    x = np.random.default_rng(config.seed(2)).standard_normal((3, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(mm.cost_tensor(x), mm.cost_tensor(list(x)), rtol=1e-6)


# -- the solver against references --------------------------------------------------------------


def test_three_marginals_match_a_float64_reference():
    xs = clouds()
    a_s = [weights(len(x), s) for s, x in enumerate(xs)]
    eps = 2.0
    out = mm.solve_multimarginal(xs, eps, a_s, threshold=1e-6, max_iterations=5000)
    _, P = numpy_mm_sinkhorn(direct_cost_tensor(xs), [np.float64(a) for a in a_s], eps)
    assert bool(out.converged)
    np.testing.assert_allclose(np.asarray(out.coupling), P, atol=2e-6)
    for marginal, a in zip(out.marginals, a_s, strict=True):
        np.testing.assert_allclose(marginal, a, atol=2e-6)
    assert float(out.marginal_error) < 1e-5


def test_reg_ot_cost_is_the_primal_objective():
    xs = clouds(seed=3)
    a_s = [weights(len(x), s + 7) for s, x in enumerate(xs)]
    eps = 1.5
    out = mm.solve_multimarginal(xs, eps, a_s, threshold=1e-6, max_iterations=5000)
    P = np.asarray(out.coupling, np.float64)
    C = direct_cost_tensor(xs)
    product = np.einsum("i,j,k->ijk", *[np.float64(a) for a in a_s])
    kl = np.sum(P * np.log(P / product))
    np.testing.assert_allclose(float(out.reg_ot_cost), np.sum(P * C) + eps * kl, rtol=1e-4)
    np.testing.assert_allclose(float(out.transport_cost), np.sum(P * C), rtol=1e-4)


def test_two_marginals_is_ordinary_sinkhorn():
    xs = clouds(sizes=(7, 9), d=3, seed=4)
    a, b = weights(7, 1), weights(9, 2)
    out = mm.solve_multimarginal(xs, 0.5, (a, b), threshold=1e-6, max_iterations=5000)
    ref = ot.solve(
        xs[0], xs[1], 0.5, a, b, threshold=1e-6, max_iterations=5000, return_coupling=True
    )
    np.testing.assert_allclose(out.coupling, ref.coupling, atol=1e-6)
    np.testing.assert_allclose(float(out.reg_ot_cost), float(ref.reg_ot_cost), rtol=1e-5)


def test_cost_scale_rescales_the_problem_exactly():
    xs = clouds(seed=5)
    base = mm.solve_multimarginal(xs, 1.0, threshold=1e-6, max_iterations=5000)
    scaled = mm.solve_multimarginal(xs, 0.25, cost_scale=0.25, threshold=1e-6, max_iterations=5000)
    np.testing.assert_allclose(scaled.coupling, base.coupling, atol=1e-6)
    np.testing.assert_allclose(float(scaled.reg_ot_cost), 0.25 * float(base.reg_ot_cost), rtol=1e-5)
    np.testing.assert_allclose(scaled.cost, 0.25 * base.cost, rtol=1e-6)


@pytest.mark.statistical
def test_iterations_grow_as_epsilon_shrinks():
    xs = clouds(seed=6)
    its = [int(mm.solve_multimarginal(xs, e, max_iterations=5000).n_iterations) for e in (3.0, 0.3)]
    assert its[0] < its[1]


# -- jit, vmap, recompilation -------------------------------------------------------------------


def test_epsilon_is_dynamic_and_vmappable():
    xs = tuple(jnp.asarray(x) for x in clouds())
    a_s = tuple(jnp.full(len(x), 1.0 / len(x)) for x in xs)
    core = mm.solve_multimarginal_core
    args = (jnp.float32(1e-3), jnp.float32(1.0), costs.SqEuclidean())
    core(xs, a_s, jnp.float32(1.0), *args)
    with traces() as seen:
        core(xs, a_s, jnp.float32(0.3), *args)
        core(xs, a_s, jnp.float32(3.0), *args)
    assert seen[core.__name__] == 0
    eps = jnp.asarray([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda e: core(xs, a_s, e, *args).reg_ot_cost)(eps)
    single = [float(core(xs, a_s, e, *args).reg_ot_cost) for e in eps]
    np.testing.assert_allclose(batched, single, rtol=1e-4)


def test_jitted_bad_epsilon_raises():
    xs = tuple(jnp.asarray(x) for x in clouds())
    a_s = tuple(jnp.full(len(x), 1.0 / len(x)) for x in xs)
    f = jax.jit(
        lambda e: (
            mm.solve_multimarginal_core(
                xs, a_s, e, jnp.float32(1e-3), jnp.float32(1.0), costs.SqEuclidean()
            ).reg_ot_cost
        )
    )
    assert np.isfinite(float(f(1.0)))
    with pytest.raises(Exception, match="epsilon must be a finite number > 0"):
        jax.block_until_ready(f(-1.0))


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x_s": [np.zeros((3, 2))]}, ValueError, "k >= 2"),
        ({"x_s": [np.zeros((3, 2)), np.zeros((3, 3))]}, ValueError, "same dimension"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be a finite number > 0"),
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"x_s": [np.full((3, 2), np.nan), np.zeros((3, 2))]}, ValueError, "NaN"),
        ({"a_s": [np.ones(3), None]}, ValueError, "sum to one"),
        ({"a_s": [None]}, ValueError, "a_s must be"),
        ({"cost_fn": "sqeuclidean"}, TypeError, "cost_fn"),
        ({"cost_scale": 0.0}, ValueError, "cost_scale"),
        ({"threshold": -1.0}, ValueError, "threshold"),
        ({"max_iterations": 15}, ValueError, "multiple of inner_iterations"),
        ({"x_s": "abc"}, TypeError, "x_s"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"x_s": [np.zeros((3, 2)), np.ones((3, 2))], "epsilon": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        mm.solve_multimarginal(**args)


def test_a_tensor_too_large_is_refused_before_allocating():
    # 6 views of 64 points: 64**6 = 6.9e10 entries (256 GiB in float32): refused at once.
    x = jnp.zeros((6, 64, 16))
    with pytest.raises(ValueError, match="64 x 64 x 64 x 64 x 64 x 64"):
        mm.solve_multimarginal(x, 1.0)
    with pytest.raises(ValueError, match="max_entries"):
        mm.cost_tensor(x)
    with pytest.raises(ValueError, match="max_entries=100"):
        mm.solve_multimarginal(jnp.zeros((3, 5, 2)), 1.0, max_entries=100)
    assert mm.check_tensor_size((5, 5, 4), 100) == 100
