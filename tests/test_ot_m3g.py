"""otdiff.ot.m3g: the multi-marginal matching gap, its baselines, encoder, training, evaluation.

References used here: the circular variance computed tuple by tuple (and its identity with the
sum of pairwise squared distances on the sphere), the definition of the gap rebuilt from
``solve_multimarginal`` and, for two views, from ``otdiff.ot.solve``, Danskin's formula
evaluated with the coupling held fixed, central finite differences in float64, and NumPy
versions of InfoNCE and of the evaluations.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import config, nn, ot
from otdiff.data import load_digits
from otdiff.ot import m3g, multimarginal


def sphere(k=3, n=6, d=4, seed=0, dtype=np.float32):
    z = np.random.default_rng(config.seed(seed)).standard_normal((k, n, d))
    return (z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(dtype)


# -- the cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5])
def test_circular_variance_is_the_sum_of_pairwise_squared_distances(k):
    z = sphere(k=k, n=50, d=7, seed=k)  # 50 tuples of k unit vectors in R^7
    tuples = np.swapaxes(z, 0, 1).astype(np.float64)
    pairwise = sum(
        np.sum((tuples[:, i] - tuples[:, j]) ** 2, -1) for i in range(k) for j in range(i + 1, k)
    )
    np.testing.assert_allclose(m3g.circular_variance(tuples), pairwise / k**2, rtol=1e-5)
    cv = np.asarray(m3g.circular_variance(tuples))
    assert np.all((cv >= 0) & (cv <= 1))


def test_circular_variance_extremes():
    e = np.eye(3)
    assert float(m3g.circular_variance(np.stack([e[0]] * 4))) == pytest.approx(0.0)
    assert float(m3g.circular_variance(np.stack([e[0], -e[0]]))) == pytest.approx(1.0)


def test_cost_tensor_matches_a_direct_loop():
    z = sphere(k=3, n=5, d=3, seed=1)
    C = np.asarray(m3g.circular_variance_tensor(z))
    ref = np.zeros((5, 5, 5))
    for i, j, m in itertools.product(range(5), repeat=3):
        ref[i, j, m] = 1 - np.sum(((z[0, i] + z[1, j] + z[2, m]) / 3) ** 2)
    np.testing.assert_allclose(C, ref, atol=1e-6)
    np.testing.assert_allclose(C, m3g.circular_variance_tensor(list(z)), atol=0)


# -- the gap ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (3, 1), (3, 2), (4, 3)])
def test_gap_is_nonnegative_even_when_stopped_early(k, seed):
    z = sphere(k=k, n=6, d=3, seed=seed)
    for eps in (0.01, 0.1, 1.0):
        assert float(m3g.matching_gap(z, eps).loss) >= -1e-6
        early = m3g.matching_gap(z, eps, max_iterations=10, inner_iterations=10)
        assert float(early.loss) >= -1e-6


def test_gap_vanishes_at_perfectly_aligned_views_and_grows_with_misalignment():
    basis = np.eye(8, dtype=np.float32)  # 8 objects far apart (orthogonal), 3 identical views
    aligned = np.stack([basis] * 3)
    assert float(m3g.matching_gap(aligned, 0.02).loss) < 1e-6
    # one view rotated towards another object: the ground truth is no longer optimal
    swapped = aligned.copy()
    swapped[2] = basis[np.roll(np.arange(8), 1)]
    assert float(m3g.matching_gap(swapped, 0.02).loss) > 0.1


def test_gap_matches_its_definition_from_the_multimarginal_solver():
    z = sphere(k=3, n=5, d=3, seed=4)
    eps, n, k = 0.05, 5, 3
    out = m3g.matching_gap(z, eps, threshold=1e-6, max_iterations=5000)
    sol = multimarginal.solve_multimarginal(
        z, eps, cost_scale=1 / k**2, threshold=1e-6, max_iterations=5000
    )
    C = np.asarray(sol.cost)
    truth = np.mean([C[i, i, i] for i in range(n)])
    np.testing.assert_allclose(float(out.ground_truth_cost), truth, rtol=1e-5)
    expected = truth + eps * (k - 1) * np.log(n) - float(sol.reg_ot_cost)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.coupling, sol.coupling, atol=1e-6)


def test_two_views_is_the_matching_gap_against_ordinary_sinkhorn():
    z = sphere(k=2, n=10, d=4, seed=5)
    eps = 0.05
    out = m3g.matching_gap(z, eps, threshold=1e-6, max_iterations=5000)
    # c_cv = |x - y|^2 / 4 on the sphere: Sinkhorn on |x - y|^2 at 4 eps, costs divided by 4
    ref = ot.solve(z[0], z[1], 4 * eps, threshold=1e-6, max_iterations=5000)
    diag = np.mean(np.sum((z[0] - z[1]) ** 2, -1)) / 4
    np.testing.assert_allclose(
        float(out.loss), diag + eps * np.log(10) - float(ref.reg_ot_cost) / 4, rtol=1e-4
    )


def test_gradient_is_danskins_formula():
    z = jnp.asarray(sphere(k=3, n=5, d=3, seed=6))
    eps = 0.05
    grad = jax.grad(lambda x: m3g.m3g_loss(x, eps, threshold=1e-6, max_iterations=5000))(z)
    P = m3g.matching_gap(z, eps, threshold=1e-6, max_iterations=5000).coupling
    J = jnp.zeros_like(P).at[jnp.arange(5), jnp.arange(5), jnp.arange(5)].set(1 / 5)

    def linear(x):  # <J - P, C(x)> with P held fixed
        return jnp.sum((J - P) * m3g.circular_variance_tensor(x))

    np.testing.assert_allclose(grad, jax.grad(linear)(z), atol=1e-5)


@pytest.mark.statistical
def test_gradient_matches_finite_differences_in_float64():
    with jax.enable_x64(True):
        z = jnp.asarray(sphere(k=3, n=5, d=3, seed=7, dtype=np.float64))
        f = jax.jit(lambda x: m3g.m3g_loss(x, 0.05, threshold=1e-11, max_iterations=20000))
        grad = jax.jit(jax.grad(f))(z)
        for seed in range(3):
            v = jax.random.normal(jax.random.key(config.seed(seed)), z.shape, jnp.float64)
            h = 1e-5
            fd = (f(z + h * v) - f(z - h * v)) / (2 * h)
            np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-6)


def test_gap_is_jit_and_vmap_safe_with_a_dynamic_epsilon():
    z = jnp.asarray(sphere(k=3, n=5, d=3, seed=8))
    f = jax.jit(jax.vmap(lambda e: m3g.m3g_loss(z, e)))
    eps = jnp.asarray([0.02, 0.1, 0.5])
    batched = f(eps)
    single = [float(m3g.matching_gap(z, float(e)).loss) for e in eps]
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "error", "match"),
    [
        (np.zeros((1, 4, 3)), {}, ValueError, "k >= 2"),
        (np.zeros((4, 3)), {}, ValueError, r"shape \(k, n, d\)"),
        ([np.zeros((4, 3)), np.zeros((5, 3))], {}, ValueError, "same number of objects"),
        (np.ones((3, 4, 3)), {"epsilon": 0.0}, ValueError, "epsilon"),
        (np.ones((3, 4, 3)), {"epsilon": -0.1}, ValueError, "epsilon"),
        (np.full((3, 4, 3), np.nan), {}, ValueError, "NaN"),
        (np.ones((6, 64, 3)), {}, ValueError, "max_entries"),
        (np.ones((3, 4, 3)), {"threshold": 0}, ValueError, "threshold"),
    ],
)
def test_bad_input(embeddings, kwargs, error, match):
    args = {"epsilon": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        m3g.matching_gap(embeddings, **args)


# -- InfoNCE ------------------------------------------------------------------------------------


def numpy_infonce(u, v, tau):
    logits = np.asarray(u, np.float64) @ np.asarray(v, np.float64).T / tau

    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return np.mean(-np.diag(lg) + np.log(np.exp(lg).sum(1)))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_infonce_losses_match_numpy():
    z = sphere(k=3, n=8, d=5, seed=9)
    tau = 0.2
    np.testing.assert_allclose(
        float(m3g.infonce(z[0], z[1], tau)), numpy_infonce(z[0], z[1], tau), rtol=1e-5
    )
    pairs = [numpy_infonce(z[i], z[j], tau) for i, j in [(0, 1), (0, 2), (1, 2)]]
    np.testing.assert_allclose(float(m3g.infonce_pairwise(z, tau)), np.mean(pairs), rtol=1e-5)
    rest = []
    for ell in range(3):
        avg = z[[i for i in range(3) if i != ell]].sum(0)
        rest.append(numpy_infonce(z[ell], avg / np.linalg.norm(avg, axis=-1, keepdims=True), tau))
    np.testing.assert_allclose(float(m3g.infonce_one_vs_rest(z, tau)), np.mean(rest), rtol=1e-5)


# -- views and encoder --------------------------------------------------------------------------


@pytest.mark.statistical
def test_augment_identity_shift_and_dropout():
    image = jnp.linspace(-1, 1, 64)
    key = jax.random.key(config.seed(0))
    same = m3g.augment(key, image, 0.0, 0.0, shift=0)
    np.testing.assert_array_equal(same, image)
    shifted = np.asarray(m3g.augment(key, image, 0.0, 0.0, shift=1)).reshape(8, 8)
    grid = np.asarray(image).reshape(8, 8)
    padded = np.pad(grid, 1, constant_values=-1.0)
    candidates = [padded[1 + a : 9 + a, 1 + b : 9 + b] for a in (-1, 0, 1) for b in (-1, 0, 1)]
    assert any(np.array_equal(shifted, c) for c in candidates)
    dropped = np.asarray(m3g.augment(key, jnp.ones(64), 0.5, 0.0, shift=0))
    assert set(np.unique(dropped)) <= {-1.0, 1.0} and 10 < np.sum(dropped == -1) < 54


def test_make_views_shapes_determinism_and_checks():
    images = load_digits().test_images[:10]
    v1 = m3g.make_views(jax.random.key(config.seed(1)), images, 3)
    v2 = m3g.make_views(jax.random.key(config.seed(1)), images, 3)
    assert v1.shape == (3, 10, 64)
    np.testing.assert_array_equal(v1, v2)
    assert not np.allclose(v1[0], v1[1])
    with pytest.raises(ValueError, match="dropout"):
        m3g.make_views(jax.random.key(config.seed(1)), images, 3, dropout=1.0)
    with pytest.raises(ValueError, match="shift"):
        m3g.make_views(jax.random.key(config.seed(1)), images, 3, shift=8)
    with pytest.raises(ValueError, match="square"):
        m3g.make_views(jax.random.key(config.seed(1)), np.zeros((4, 60)), 3)
    with pytest.raises(TypeError, match="PRNG key"):
        m3g.make_views(0, images, 3)


def test_encoder_maps_onto_the_sphere():
    enc = nn.SphereMLP(64, 8, width=32, depth=2, key=jax.random.key(config.seed(0)))
    z = m3g.embed(enc, load_digits().test_images[:20])
    assert z.shape == (20, 8)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    assert m3g.embed(enc, jnp.zeros((2, 3, 64))).shape == (2, 3, 8)


# -- training -----------------------------------------------------------------------------------

TINY = m3g.TrainConfig(n_views=3, batch_size=6, n_steps=4, width=16, depth=1, dim=4)


@pytest.mark.parametrize("method", ["m3g", "infonce_one_vs_rest"])
def test_training_is_deterministic_and_finite(method):
    images = load_digits().train_images[:200]
    cfg = TINY._replace(method=method)
    a = m3g.train(jax.random.key(config.seed(3)), images, cfg)
    b = m3g.train(jax.random.key(config.seed(3)), images, cfg)
    assert a.losses.shape == (4,) and np.all(np.isfinite(a.losses))
    np.testing.assert_array_equal(a.losses, b.losses)
    if method == "m3g":
        assert np.all(a.iterations > 0) and np.all(a.losses >= -1e-6)
    w_a = jax.tree_util.tree_leaves(a.encoder)
    w_b = jax.tree_util.tree_leaves(b.encoder)
    assert all(np.array_equal(x, y) for x, y in zip(w_a, w_b, strict=True))


def test_train_batch_over_epsilons_and_cache(tmp_path):
    images = load_digits().train_images[:200]
    results = m3g.train_batch(
        [jax.random.key(config.seed(0)), jax.random.key(config.seed(0))],
        images,
        TINY,
        epsilons=[0.01, 1.0],
    )
    assert len(results) == 2 and not np.allclose(results[0].losses, results[1].losses)
    first = m3g.train_cached(config.seeds(2), images, TINY, cache=tmp_path, verbose=False)
    files = sorted(tmp_path.glob("m3g_m3g_*-seed*.ckpt"))
    assert len(files) == 2
    again = m3g.train_cached(config.seeds(2), images, TINY, cache=tmp_path, verbose=False)
    for r, s in zip(first, again, strict=True):
        np.testing.assert_array_equal(r.losses, s.losses)
        for x, y in zip(
            jax.tree_util.tree_leaves(r.encoder), jax.tree_util.tree_leaves(s.encoder), strict=True
        ):
            np.testing.assert_array_equal(x, y)
    files[0].write_bytes(files[0].read_bytes()[:-10])  # a corrupted file is rebuilt
    rebuilt = m3g.train_cached(config.seeds(2), images, TINY, cache=tmp_path, verbose=False)
    np.testing.assert_allclose(rebuilt[0].losses, first[0].losses, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "byol"}, "method must be one of"),
        ({"n_views": 1}, "n_views"),
        ({"batch_size": 1}, "batch_size"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"temperature": -1.0}, "temperature"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"n_views": 6, "batch_size": 64}, "max_entries"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_training_settings(change, match):
    with pytest.raises(ValueError, match=match):
        m3g.train(
            jax.random.key(config.seed(0)),
            load_digits().train_images[:100],
            TINY._replace(**change),
        )


def test_bad_training_arguments():
    images = load_digits().train_images[:100]
    with pytest.raises(TypeError, match="TrainConfig"):
        m3g.train(jax.random.key(config.seed(0)), images, {"method": "m3g"})
    with pytest.raises(TypeError, match="PRNG key"):
        m3g.train(42, images, TINY)
    with pytest.raises(ValueError, match="epsilons must hold one value per key"):
        m3g.train_batch([jax.random.key(config.seed(0))], images, TINY, epsilons=[0.1, 0.2])


# -- evaluation ---------------------------------------------------------------------------------


@pytest.mark.statistical
def test_evaluations_on_known_answers():
    rng = np.random.default_rng(config.seed(0))
    centres = np.eye(4)
    labels = rng.integers(0, 4, 200)
    z = centres[labels] + 0.05 * rng.standard_normal((200, 4))
    assert m3g.linear_probe(z[:150], labels[:150], z[150:], labels[150:]) == 1.0
    assert m3g.knn_accuracy(z[:150], labels[:150], z[150:], labels[150:]) == 1.0
    views = np.stack([sphere(k=1, n=64, d=16, seed=1)[0]] * 3)
    assert m3g.cross_view_retrieval(views, batch_size=32) == 1.0
    noise = sphere(k=3, n=640, d=16, seed=2)
    assert m3g.cross_view_retrieval(noise, batch_size=32) < 0.1  # chance: 1/32
    with pytest.raises(ValueError, match="one label each"):
        m3g.linear_probe(z, labels[:10], z, labels)
    with pytest.raises(ValueError, match="batch_size"):
        m3g.cross_view_retrieval(views, batch_size=100)


@pytest.mark.statistical
def test_evaluate_returns_three_scores():
    data = load_digits()
    enc = nn.SphereMLP(64, 8, width=32, depth=1, key=jax.random.key(config.seed(0)))
    ev = m3g.evaluate(jax.random.key(config.seed(1)), enc, data)
    assert all(0.0 <= v <= 1.0 for v in ev)
    assert ev.linear_probe > 0.5  # even a random MLP's features are linearly informative
    with pytest.raises(TypeError, match="SphereMLP"):
        m3g.evaluate(jax.random.key(config.seed(1)), "encoder", data)


def test_the_chapter_encoders_are_shipped(monkeypatch, tmp_path):
    # the demo encoders load from the package, whatever the user cache holds: nothing trains
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(config.SEED_OFFSET_VAR, raising=False)  # the shipped seeds
    monkeypatch.setattr(m3g, "train_batch", lambda *a, **k: pytest.fail("trained an encoder"))
    chapter = m3g.chapter_encoders(scale="demo", verbose=False)
    assert set(chapter.runs) == set(m3g.TRAIN_METHODS) and set(chapter.sweep) == set(m3g.EPS_SWEEP)
    assert all(len(runs) == len(chapter.seeds) for runs in chapter.runs.values())
    for runs in [*chapter.runs.values(), *chapter.sweep.values()]:
        assert all(np.all(np.isfinite(r.losses)) and r.losses.shape == (1000,) for r in runs)
    assert not list(tmp_path.rglob("*.ckpt"))
