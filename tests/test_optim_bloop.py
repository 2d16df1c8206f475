"""Tests of otdiff.optim: Bloop and its baselines as optax transformations, the problems, run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _jax_traces import traces
from jax.flatten_util import ravel_pytree

from otdiff import config, optim
from otdiff.optim import problems

RTOL = 1e-5


def random_tree(key, scale=1.0):
    """A nested pytree with leaves of several shapes."""
    k = jax.random.split(key, 3)
    return {
        "dense": (jax.random.normal(k[0], (3, 4)) * scale, jax.random.normal(k[1], (4,)) * scale),
        "scalar": jax.random.normal(k[2], ()) * scale,
    }


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def project(u, v, eps):
    return u - (u @ v) / (v @ v + eps) * v


def grad_stream(n, seed=0):
    keys = jax.random.split(jax.random.key(config.seed(seed)), 2 * n)
    return [(random_tree(keys[2 * i]), random_tree(keys[2 * i + 1])) for i in range(n)]


# -- the transformation against the formula -----------------------------------------------------


@pytest.mark.parametrize("lam,rho", [(0.3, 0.2), (2.0, 1.0)])
def test_bloop_matches_direct_formula(lam, rho):
    eps = 1e-8
    stream = grad_stream(5)
    tx = optim.bloop(lam=lam, ema_rate=rho, eps=eps)
    state = tx.init(stream[0][0])
    update = jax.jit(tx.update)
    ema = np.zeros_like(flat(stream[0][0]))
    for t, (g, a) in enumerate(stream):
        d, state = update(g, state, None, aux_grad=a)
        assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(g)
        g_, a_ = flat(g), flat(a)
        if t == 0:  # the EMA is empty: the first step is the plain sum
            expected = g_ + lam * a_
        else:
            m_hat = ema / (1 - (1 - rho) ** t)
            expected = g_ + lam * project(a_, m_hat, eps)
        np.testing.assert_allclose(flat(d), expected, rtol=RTOL, atol=1e-5)
        ema = (1 - rho) * ema + rho * g_  # Algorithm 1: update the EMA after projecting
        np.testing.assert_allclose(flat(state.ema), ema, rtol=RTOL, atol=1e-6)
        assert int(state.count) == t + 1


def test_projected_aux_component_is_orthogonal_to_ema():
    lam = 0.7
    tx = optim.bloop(lam=lam, ema_rate=0.1)
    stream = grad_stream(4, seed=1)
    state = tx.init(stream[0][0])
    for g, a in stream:
        m_hat = flat(state.ema) / (1 - 0.9 ** int(state.count)) if int(state.count) else None
        d, state = tx.update(g, state, aux_grad=a)
        if m_hat is not None:
            aux_part = (flat(d) - flat(g)) / lam
            cos = aux_part @ m_hat / (np.linalg.norm(aux_part) * np.linalg.norm(m_hat))
            assert abs(cos) < 1e-5
            # and the projection removed something: a itself was not orthogonal
            assert abs(flat(a) @ m_hat) / (np.linalg.norm(flat(a)) * np.linalg.norm(m_hat)) > 1e-3


def test_tree_project_is_orthogonal_and_guarded():
    u, v = random_tree(jax.random.key(config.seed(2))), random_tree(jax.random.key(config.seed(3)))
    p = optim.tree_project(u, v, 1e-12)
    assert abs(float(optax.tree_utils.tree_vdot(p, v))) < 1e-4
    zero = jax.tree_util.tree_map(jnp.zeros_like, v)
    np.testing.assert_allclose(flat(optim.tree_project(u, zero)), flat(u))  # eps guards v = 0


# -- the baselines against their formulas --------------------------------------------------------


def test_weighted_sum_and_projected():
    g, a = random_tree(jax.random.key(config.seed(4))), random_tree(jax.random.key(config.seed(5)))
    lam, eps = 0.4, 1e-8
    for tx, expected in [
        (optim.weighted_sum(lam), flat(g) + lam * flat(a)),
        (optim.projected(lam, eps), flat(g) + lam * project(flat(a), flat(g), eps)),
    ]:
        d, _ = tx.update(g, tx.init(g), aux_grad=a)
        np.testing.assert_allclose(flat(d), expected, rtol=RTOL, atol=1e-6)


def test_pcgrad_conflict_and_no_conflict():
    lam, eps = 0.5, 1e-8
    g = {"w": jnp.array([1.0, 0.0, 2.0])}
    tx = optim.pcgrad(lam, eps)
    state = tx.init(g)
    # conflict: <g, a> < 0, each gradient is projected on the normal plane of the other
    a = {"w": jnp.array([-1.0, 1.0, 0.0])}
    d, _ = tx.update(g, state, aux_grad=a)
    G, A = flat(g), flat(a)
    expected = project(G, A, eps) + lam * project(A, G, eps)
    np.testing.assert_allclose(flat(d), expected, rtol=RTOL)
    # no conflict: the plain sum
    a = {"w": jnp.array([1.0, 1.0, 0.0])}
    d, _ = tx.update(g, state, aux_grad=a)
    np.testing.assert_allclose(flat(d), G + lam * flat(a), rtol=RTOL)
    # lam = 0: the auxiliary task vanishes and nothing conflicts
    a = {"w": jnp.array([-1.0, 1.0, 0.0])}
    d, _ = optim.pcgrad(0.0).update(g, state, aux_grad=a)
    np.testing.assert_allclose(flat(d), G)


def test_surgery_dispatch():
    g, a = random_tree(jax.random.key(config.seed(6))), random_tree(jax.random.key(config.seed(7)))
    for method in optim.METHODS:
        tx = optim.surgery(method, 0.3, 0.5)
        d, _ = tx.update(g, tx.init(g), aux_grad=a)
        assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(g)


# -- optax composition, jit, dynamic hyperparameters -------------------------------------------


def test_chains_with_optax_under_jit():
    params = random_tree(jax.random.key(config.seed(8)))
    stream = grad_stream(3, seed=3)
    for opt in (optax.sgd(0.1), optax.adam(1e-2)):
        tx = optax.chain(optim.bloop(0.2, 0.3), opt)
        surgery, base = optim.bloop(0.2, 0.3), opt
        state, s1, s2 = tx.init(params), surgery.init(params), base.init(params)

        @jax.jit
        def step(params, state, g, a, tx=tx):
            updates, state = tx.update(g, state, params, aux_grad=a)
            return optax.apply_updates(params, updates), state

        p_manual = params
        p_chain = params
        for g, a in stream:
            p_chain, state = step(p_chain, state, g, a)
            d, s1 = surgery.update(g, s1, aux_grad=a)
            u, s2 = base.update(d, s2, p_manual)
            p_manual = optax.apply_updates(p_manual, u)
        assert jax.tree_util.tree_structure(p_chain) == jax.tree_util.tree_structure(params)
        np.testing.assert_allclose(flat(p_chain), flat(p_manual), rtol=1e-5, atol=1e-6)


def test_dynamic_hyperparameters_do_not_recompile():
    params = random_tree(jax.random.key(config.seed(9)))
    g, a = grad_stream(1, seed=4)[0]

    @jax.jit
    def direction(lam, rho):
        tx = optim.bloop(lam, rho)
        state = tx.init(params)
        _, state = tx.update(g, state, aux_grad=a)
        return tx.update(g, state, aux_grad=a)[0]

    with traces() as seen:
        d1 = direction(0.1, 0.01)
        d2 = direction(0.5, 0.2)
    assert seen["direction"] == 1
    assert not np.allclose(flat(d1), flat(d2))
    # and through optax.inject_hyperparams, with the values stored in the state
    tx = optax.inject_hyperparams(optim.bloop)(lam=0.1, ema_rate=0.5)
    state = tx.init(params)
    d, state = jax.jit(tx.update)(g, state, aux_grad=a)
    np.testing.assert_allclose(flat(d), flat(g) + 0.1 * flat(a), rtol=RTOL)
    assert float(state.hyperparams["lam"]) == pytest.approx(0.1)


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5, float("nan")])
def test_bad_ema_rate(rho):
    with pytest.raises(ValueError, match=r"ema_rate must lie in \(0, 1\]"):
        optim.bloop(0.1, rho)


def test_ema_rate_one_is_allowed_and_projects_on_previous_batch():
    (g0, a0), (g1, a1) = grad_stream(2, seed=5)
    tx = optim.bloop(0.3, 1.0)
    _, state = tx.update(g0, tx.init(g0), aux_grad=a0)
    d, _ = tx.update(g1, state, aux_grad=a1)
    expected = flat(g1) + 0.3 * project(flat(a1), flat(g0), optim.DEFAULT_EPS)
    np.testing.assert_allclose(flat(d), expected, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize(
    "factory", [optim.bloop, optim.weighted_sum, optim.projected, optim.pcgrad]
)
def test_negative_lam(factory):
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0"):
        factory(-0.1)


@pytest.mark.parametrize("factory", [optim.projected, optim.pcgrad])
def test_bad_eps(factory):
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        factory(0.1, eps=0.0)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        optim.bloop(0.1, 0.01, eps=-1.0)


def test_mismatched_aux_grad():
    g = random_tree(jax.random.key(config.seed(10)))
    for method in optim.METHODS:
        tx = optim.surgery(method)
        state = tx.init(g)
        with pytest.raises(ValueError, match="aux_grad must have the same pytree structure"):
            tx.update(g, state, aux_grad={"dense": g["dense"]})
        wrong = {**g, "scalar": jnp.ones(2)}
        with pytest.raises(ValueError, match=r"aux_grad must have the shapes.*\['scalar'\]"):
            tx.update(g, state, aux_grad=wrong)
        with pytest.raises(TypeError, match="keyword argument aux_grad"):
            tx.update(g, state)


def test_run_validation():
    p = problems.least_squares(config.seed(0), n=4, d=6)
    key = jax.random.key(config.seed(0))
    with pytest.raises(ValueError, match="method must be one of"):
        optim.run(key, p, method="mgda")
    with pytest.raises(ValueError, match="multiple of record_every"):
        optim.run(key, p, n_steps=10, record_every=3)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.run(key, p, learning_rate=0.0)
    with pytest.raises(ValueError, match="ema_rate"):
        optim.run(key, p, ema_rate=2.0)
    with pytest.raises(ValueError, match="optimizer"):
        optim.run(key, p, optimizer="lbfgs")
    with pytest.raises(ValueError, match="n must be an integer"):
        problems.least_squares(n=6, d=6)


# -- the problems and training -------------------------------------------------------------------


def test_least_squares_known_answer():
    p = problems.least_squares(config.seed(1), n=20, d=30)
    X, y = np.asarray(p.X, np.float64), np.asarray(p.y, np.float64)
    bl, star = np.asarray(p.theta_bilevel, np.float64), np.asarray(p.theta_star, np.float64)
    np.testing.assert_allclose(X @ bl, y, atol=1e-4)  # on the solution set
    # the closest point of the set to theta_star: theta_star - theta_bl is in the row space
    residual = (star - bl) - np.asarray(p.row_basis) @ (np.asarray(p.row_basis).T @ (star - bl))
    assert np.linalg.norm(residual) < 1e-4 * np.linalg.norm(star - bl)
    along, off = p.coordinates(p.theta_bilevel)
    assert float(along) < 1e-3 and float(off) < 1e-3
    # the weighted sum's minimiser is stationary for main + lam * aux, and misses the set
    lam = 0.1
    t = p.sum_solution(lam)
    grad = jax.grad(lambda th: p.main_loss(th) + lam * p.aux_loss(th))(t)
    assert float(jnp.linalg.norm(grad)) < 1e-3
    assert float(p.main_loss(t)) > 1e-3


@pytest.mark.statistical
def test_run_bloop_beats_sum_on_small_problem_and_is_deterministic():
    p = problems.least_squares(config.seed(2), n=20, d=40)
    key = jax.random.key(config.seed(1))
    kw = dict(lam=0.1, ema_rate=0.05, learning_rate=0.02, n_steps=2000, batch_size=4)
    _, h_bloop = optim.run(key, p, method="bloop", record_every=500, **kw)
    _, h_sum = optim.run(key, p, method="sum", record_every=500, **kw)
    assert h_bloop["distance"].shape == (5,) and int(h_bloop["step"][-1]) == 2000
    # measured over 12 seeds (offsets 0 to 11), Bloop over the weighted sum: final distance to
    # the bilevel solution median 0.27, range [0.20, 0.42], threshold 0.5; final main loss median
    # 0.045, range [0.025, 0.19], threshold 0.3 (0.1 failed at one offset of the twelve; a Bloop
    # no better than the sum has ratios near 1)
    assert float(h_bloop["distance"][-1]) < 0.5 * float(h_sum["distance"][-1])
    assert float(h_bloop["main_loss"][-1]) < 0.3 * float(h_sum["main_loss"][-1])
    _, again = optim.run(key, p, method="bloop", record_every=500, **kw)
    np.testing.assert_array_equal(np.asarray(again["distance"]), np.asarray(h_bloop["distance"]))
    _, other = optim.run(jax.random.key(config.seed(2)), p, method="bloop", record_every=500, **kw)
    assert not np.array_equal(np.asarray(other["distance"]), np.asarray(h_bloop["distance"]))


def test_run_vmaps_over_lam():
    p = problems.least_squares(config.seed(3), n=10, d=20)
    lams = jnp.array([0.0, 0.1, 1.0])
    fn = jax.vmap(
        lambda lam: optim.run(
            jax.random.key(config.seed(0)), p, method="sum", lam=lam, n_steps=200, record_every=20
        )[1]
    )
    h = fn(lams)
    assert h["aux_loss"].shape == (3, 11)
    assert np.all(np.diff(np.asarray(h["aux_loss"][:, -1])) < 0)  # more weight, smaller aux


def test_digits_problem_and_spectral_norm():
    w = jax.random.normal(jax.random.key(config.seed(3)), (7, 5))
    for m in (w, w.T):
        np.testing.assert_allclose(
            float(problems.spectral_norm(m)), np.linalg.norm(np.asarray(m), 2), rtol=1e-4
        )
    # the digits read without importing scikit-learn: scikit-learn's well-known class counts
    from otdiff.data import load_digits_raw

    pixels, labels = load_digits_raw()
    assert pixels.shape == (1797, 64) and pixels.min() == 0.0 and pixels.max() == 1.0
    counts = np.bincount(labels, minlength=10).tolist()
    assert counts == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    p = problems.digits((8,), seed=config.seed(0))
    assert p.x_train.shape[1] == 64 and float(p.x_train.max()) <= 1.0
    assert p.x_train.shape[0] + p.x_test.shape[0] == 1797
    params = p.init_params(jax.random.key(config.seed(0)))
    assert [layer["w"].shape for layer in params] == [(64, 8), (8, 10)]
    metrics = jax.jit(lambda problem, params: problem.evaluate(params))(p, params)
    assert set(metrics) >= {"main_loss", "test_accuracy", "aux_loss"}
    expected = sum(np.log(np.linalg.norm(np.asarray(layer["w"]), 2)) for layer in params)
    np.testing.assert_allclose(float(metrics["aux_loss"]), expected, rtol=1e-4)


def test_digits_problem_uses_the_books_split_and_scaling():
    """One digits dataset for the whole book: the Bloop problem trains and tests on exactly the
    images, scaling ([-1, 1]) and 80/20 split of ``otdiff.data.load_digits``."""
    from otdiff.data import load_digits

    book = load_digits()
    p = problems.digits((8,))
    np.testing.assert_array_equal(np.asarray(p.x_train), book.train_images)
    np.testing.assert_array_equal(np.asarray(p.y_train), book.train_labels)
    np.testing.assert_array_equal(np.asarray(p.x_test), book.test_images)
    np.testing.assert_array_equal(np.asarray(p.y_test), book.test_labels)
    assert float(p.x_train.min()) == -1.0 and float(p.x_train.max()) == 1.0
    assert p.x_test.shape[0] == round(0.2 * 1797)
    other = problems.digits((8,), test_fraction=0.3, seed=1)
    np.testing.assert_array_equal(
        np.asarray(other.x_test), load_digits(test_fraction=0.3, seed=1).test_images
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"hidden": (0,)}, "hidden"),
    ],
)
def test_digits_problem_rejects_bad_arguments(kwargs, name):
    hidden = kwargs.pop("hidden", (8,))
    with pytest.raises((ValueError, TypeError), match=name):
        problems.digits(hidden, **kwargs)


def test_switched_surgery_matches_each_method():
    from otdiff.optim.bloop import _switched_surgery

    stream = grad_stream(3, seed=6)
    for index, method in enumerate(optim.METHODS):
        named = optim.surgery(method, 0.4, 0.3)
        switched = _switched_surgery(jnp.int32(index), 0.4, 0.3, optim.DEFAULT_EPS)
        s1, s2 = named.init(stream[0][0]), switched.init(stream[0][0])
        for g, a in stream:
            d1, s1 = named.update(g, s1, aux_grad=a)
            d2, s2 = jax.jit(switched.update)(g, s2, aux_grad=a)
            np.testing.assert_allclose(flat(d2), flat(d1), rtol=1e-6, atol=1e-7)


def test_bloop_is_finite_for_tiny_and_unit_ema_rates():
    """Why Bloop keeps its own bias correction: with a rate of 1e-9 the decay 1 - rate rounds to
    1 in float32, and optax's tree_bias_correction (1 - decay^t) divides by zero; Bloop's
    -expm1(t log1p(-rate)) stays exact, so the projection is on the (rescaled) first gradient."""
    stream = grad_stream(3, seed=7)
    for rho in (1e-9, 1.0):
        tx = optim.bloop(0.5, rho)
        state = tx.init(stream[0][0])
        for g, a in stream:
            d, state = tx.update(g, state, aux_grad=a)
            assert np.all(np.isfinite(flat(d)))
    decay = jnp.float32(1.0) - jnp.float32(1e-9)
    naive = optax.tree_utils.tree_bias_correction(state.ema, decay, state.count)
    assert not np.all(np.isfinite(flat(naive)))
    # with rho = 1e-9 the EMA after two steps is rho (g0 + g1) to first order: corrected, g0 + g1
    tx = optim.bloop(0.5, 1e-9)
    state = tx.init(stream[0][0])
    for g, a in stream[:2]:
        _, state = tx.update(g, state, aux_grad=a)
    g0, g1, a2 = flat(stream[0][0]), flat(stream[1][0]), flat(stream[2][1])
    d, _ = tx.update(stream[2][0], state, aux_grad=stream[2][1])
    expected = flat(stream[2][0]) + 0.5 * project(a2, (g0 + g1) / 2, optim.DEFAULT_EPS)
    np.testing.assert_allclose(flat(d), expected, rtol=1e-4, atol=1e-5)
