"""otdiff.ot.initializers: data-dependent Sinkhorn starts, checked against ott-jax and closed forms.

References: ott-jax's own initializers (Gaussian; DualSort on pre-sorted input), the closed-form
Gaussian potential and W2 distance written out below with NumPy/SciPy, the exact 1-D dual
(monotone matching), and the zero start's solution (every start must reach the same optimum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from ott.geometry import costs, pointcloud
from ott.initializers.linear import initializers as ott_init
from ott.problems.linear import linear_problem

from otdiff import ot
from otdiff.data import gaussian_clouds
from otdiff.ot.initializers import _gaussian_pair

N = 60


def problem(x, y, eps=0.1, cost_fn=None):
    geom = pointcloud.PointCloud(x, y, epsilon=eps, cost_fn=cost_fn or costs.SqEuclidean())
    return linear_problem.LinearProblem(geom)


def clouds(n=N, d=2, seed=0):
    return gaussian_clouds(jax.random.key(seed), n, d)


def start(init, x, y):
    """The initializer's f0 on the squared-Euclidean problem, computed under jit."""
    return jax.jit(lambda p, q: init(problem(p, q), lse_mode=True)[0])(x, y)


# -- each initializer against a reference ----------------------------------------------------


def test_gaussian_matches_ott_and_the_closed_form():
    x, y = clouds(d=3)
    ours = start(ot.GaussianInitializer(), x, y)
    theirs = start(ott_init.GaussianInitializer(), x, y)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # closed form: f(x) = |x|^2 - x^T A x - 2 (m_b - A m_a)^T x, centred
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ma, mb = xn.mean(0), yn.mean(0)
    sa, sb = np.cov(xn.T, bias=True), np.cov(yn.T, bias=True)
    ra = scipy.linalg.sqrtm(sa).real
    ira = np.linalg.inv(ra)
    A = ira @ scipy.linalg.sqrtm(ra @ sb @ ra).real @ ira
    f = (xn**2).sum(1) - np.einsum("ni,ij,nj->n", xn, A, xn) - 2 * xn @ (mb - A @ ma)
    np.testing.assert_allclose(ours, f - f.mean(), atol=2e-3 * np.abs(f).max())


def test_gaussian_refuses_other_costs():
    x, y = clouds()
    with pytest.raises(ValueError, match="cost_fn"):
        ot.GaussianInitializer()(problem(x, y, cost_fn=costs.Euclidean()), lse_mode=True)
    with pytest.raises(ValueError, match="cost_fn"):
        ot.GaussianMixtureInitializer()(problem(x, y, cost_fn=costs.PNormP(1.5)), lse_mode=True)


def test_sorting_unsorts_and_matches_ott_on_sorted_input():
    x, y = clouds(d=1)
    xs, ys = jnp.sort(x, axis=0), jnp.sort(y, axis=0)
    theirs = ott_init.SortingInitializer(tolerance=1e-12, max_iter=2000)(
        problem(xs, ys), lse_mode=True
    )[0]
    ours_sorted = ot.SortingInitializer(rtol=0.0)(problem(xs, ys), lse_mode=True)[0]
    np.testing.assert_allclose(ours_sorted, theirs, atol=1e-4)
    perm = np.random.default_rng(0).permutation(N)
    ours = ot.SortingInitializer(rtol=0.0)(problem(x[perm], y), lse_mode=True)[0]
    order = np.argsort(np.asarray(x[perm, 0]))
    np.testing.assert_allclose(np.asarray(ours)[order], ours_sorted, atol=1e-4)


def test_sorting_potential_is_an_exact_dual_of_the_1d_problem():
    x, y = clouds(d=1, seed=3)
    xs, ys = np.sort(np.asarray(x[:, 0])), np.sort(np.asarray(y[:, 0]))
    f = np.asarray(ot.SortingInitializer(rtol=0.0)(problem(xs[:, None], ys[:, None]), True)[0])
    C = (xs[:, None] - ys[None, :]) ** 2
    g = np.diag(C) - f  # complementary slackness on the monotone matching
    assert np.all(f[:, None] + g[None, :] <= C + 1e-3)  # dual feasible
    np.testing.assert_allclose(f.mean() + g.mean(), np.mean(np.diag(C)), rtol=1e-5)


def test_gmm_with_one_component_is_the_gaussian_start():
    x, y = clouds(d=2)
    gauss = start(ot.GaussianInitializer(), x, y)
    gmm = start(ot.GaussianMixtureInitializer(n_components=1), x, y)
    np.testing.assert_allclose(gmm, gauss, atol=1e-3 * float(jnp.abs(gauss).max()))


@pytest.mark.parametrize("d", [1, 3, 16])
def test_gaussian_pieces_match_the_closed_form(d):
    # W2^2 and the Kantorovich potential of the GMM start come from ott-jax's Gaussian; check both
    # against SciPy's matrix square roots in float64.
    rng = np.random.default_rng(d)
    A, B = rng.standard_normal((2, d, d))
    cov_a, cov_b = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(d)
    m_a, m_b = rng.standard_normal((2, d))
    x = rng.standard_normal((5, d))
    args = [jnp.asarray(v, jnp.float32) for v in (m_a, cov_a, m_b, cov_b, x)]
    w2, f = jax.jit(_gaussian_pair)(*args)
    ra = scipy.linalg.sqrtm(cov_a).real
    middle = scipy.linalg.sqrtm(ra @ cov_b @ ra).real
    expected = np.sum((m_a - m_b) ** 2) + np.trace(cov_a + cov_b - 2 * middle)
    np.testing.assert_allclose(w2, expected, rtol=1e-4)
    T = np.linalg.inv(ra) @ middle @ np.linalg.inv(ra)  # the Brenier matrix
    f_ref = (x**2).sum(1) - np.einsum("ni,ij,nj->n", x, T, x) - 2 * x @ (m_b - T @ m_a)
    centred = lambda v: np.asarray(v, np.float64) - np.mean(v)
    np.testing.assert_allclose(centred(f), centred(f_ref), atol=1e-4 * np.abs(f_ref).max())


@pytest.mark.parametrize("name", ["zero", "gaussian", "subsample", "gmm"])
def test_every_start_reaches_the_same_optimum(name):
    x, y = clouds(d=2)
    eps = float(ot.relative_epsilon(x, y, 0.05))
    ref = ot.solve(x, y, eps, threshold=1e-5, max_iterations=5000)
    options = {"subsample_n": 20} if name == "subsample" else {}
    out = ot.solve(
        x,
        y,
        eps,
        initializer=ot.make_initializer(name, **options),
        key=jax.random.key(0),
        threshold=1e-5,
        max_iterations=5000,
        inner_iterations=1,
    )
    assert bool(out.converged) and out.f0.shape == (N,) and out.f.shape == (N,)
    np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-4)
    assert float(out.marginal_error) < 2e-5


def test_sorting_start_saves_iterations_in_1d():
    x, y = clouds(n=200, d=1)
    eps = float(ot.relative_epsilon(x, y, 0.01))
    zero = ot.solve(x, y, eps, inner_iterations=1)
    sort = ot.solve(x, y, eps, initializer=ot.SortingInitializer(), inner_iterations=1)
    assert int(sort.n_iterations) * 3 < int(zero.n_iterations)
    np.testing.assert_allclose(sort.reg_ot_cost, zero.reg_ot_cost, rtol=1e-4)


def test_start_is_reported_and_starts_vmap_over_epsilon():
    x, y = clouds()
    a = b = jnp.full(N, 1.0 / N)
    out = ot.solve(x, y, 0.1, initializer=ot.GaussianInitializer())
    np.testing.assert_allclose(out.f0, start(ot.GaussianInitializer(), x, y), atol=1e-5)
    np.testing.assert_array_equal(ot.solve(x, y, 0.1).f0, 0.0)
    eps = jnp.array([0.3, 0.1, 0.05])
    batched = jax.vmap(
        lambda e: (
            ot.solve_core(
                x, y, a, b, e, jnp.asarray(1e-3), initializer=ot.GaussianInitializer()
            ).n_iterations
        )
    )(eps)
    assert batched.shape == (3,) and bool(jnp.all(batched[:-1] <= batched[1:]))


def test_random_starts_follow_their_key():
    x, y = clouds()
    subsample = ot.make_initializer("subsample", subsample_n=10)
    one, two, other = (
        ot.solve(x, y, 0.1, initializer=subsample, key=jax.random.key(k)).f0 for k in (1, 1, 2)
    )
    np.testing.assert_array_equal(one, two)
    assert float(jnp.max(jnp.abs(one - other))) > 1e-3


def test_gradients_do_not_depend_on_the_start():
    x, y = clouds(n=40)
    a = b = jnp.full(40, 1.0 / 40)

    def loss(p, name):
        out = ot.solve_core(
            p,
            y,
            a,
            b,
            jnp.asarray(0.1),
            jnp.asarray(1e-6),
            initializer=ot.make_initializer(name),
            max_iterations=5000,
            inner_iterations=1,
        )
        return out.reg_ot_cost

    zero = jax.grad(loss)(x, "zero")
    np.testing.assert_allclose(jax.grad(loss)(x, "gaussian"), zero, atol=1e-4)


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    x, y = clouds()
    gauss, sort = ot.GaussianInitializer(), ot.SortingInitializer()
    with pytest.raises(ValueError, match="epsilon"):
        ot.solve(x, y, 0.0, initializer=gauss)
    with pytest.raises(ValueError, match="x must hold"):
        ot.solve(np.zeros((0, 2)), y, 0.1, initializer=gauss)
    with pytest.raises(ValueError, match="initializer must be one of"):
        ot.make_initializer("bogus")
    with pytest.raises(ValueError, match="1-D"):
        ot.solve(x, y, 0.1, initializer=sort)
    x1, y1 = clouds(d=1)
    with pytest.raises(ValueError, match="as many points"):
        ot.solve(x1, y1[:10], 0.1, initializer=sort)
    with pytest.raises(ValueError, match="uniform weights"):
        ot.solve(x1, y1, 0.1, a=np.arange(N) / np.sum(np.arange(N)), initializer=sort)
    for name in ("subsample", "gmm"):
        with pytest.raises(ValueError, match="pass key="):
            ot.solve(x, y, 0.1, initializer=ot.make_initializer(name))
    with pytest.raises(ValueError, match="cost_fn must be the squared Euclidean"):
        ot.solve(x, y, 0.1, initializer=gauss, cost_fn=costs.PNormP(1.5))
    with pytest.raises(ValueError, match="n_components"):
        ot.GaussianMixtureInitializer(n_components=0)
    with pytest.raises(ValueError, match="rtol"):
        ot.SortingInitializer(rtol=-1.0)
    with pytest.raises(ValueError, match="subsample_n"):
        ot.make_initializer("subsample", subsample_n=0)
