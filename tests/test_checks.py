"""The shared input checks: clear messages, and silence under JAX transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import _checks as C


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_positive(bad):
    with pytest.raises(ValueError, match=r"epsilon must be a finite number > 0"):
        C.check_positive(bad, "epsilon")


def test_positive_type():
    with pytest.raises(TypeError, match="epsilon must be a real scalar"):
        C.check_positive(jnp.ones(2), "epsilon")


def test_in_range_names_the_interval():
    C.check_in_range(1.0, "rate", 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"rate must lie in \(0, 1\]"):
        C.check_in_range(0.0, "rate", 0, 1, low_open=True)


def test_int():
    assert C.check_int(np.int64(3), "n", low=1) == 3
    with pytest.raises(TypeError, match="n must be an integer"):
        C.check_int(3.0, "n")
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 10\]"):
        C.check_int(11, "n", low=1, high=10)


def test_points_and_weights():
    x = C.check_points(np.arange(6).reshape(3, 2), "x")
    assert x.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        C.check_points(np.ones(3), "x")
    with pytest.raises(ValueError, match="x contains NaN"):
        C.check_points(np.array([[np.nan, 0.0]]), "x")
    with pytest.raises(ValueError, match="x and y must have the same dimension, got 2 and 3"):
        C.check_same_dim(jnp.ones((2, 2)), jnp.ones((2, 3)))
    np.testing.assert_allclose(C.check_weights(None, 4, "a"), 0.25)
    with pytest.raises(ValueError, match=r"a must have shape \(3,\)"):
        C.check_weights(jnp.ones(2) / 2, 3, "a")
    with pytest.raises(ValueError, match="a must sum to one"):
        C.check_weights(jnp.ones(2), 2, "a")
    with pytest.raises(ValueError, match="a must be non-negative"):
        C.check_weights(jnp.array([1.5, -0.5]), 2, "a")


def test_checks_are_skipped_on_tracers():
    @jax.jit
    def f(eps, w):
        C.check_positive(eps, "epsilon")
        C.check_weights(w, 2, "a")
        return eps * w

    np.testing.assert_allclose(f(-1.0, jnp.ones(2)), -1.0)


def test_checks_on_concrete_arrays_closed_over_by_a_traced_function():
    x = jnp.ones((3, 2))
    w = jnp.full(3, 1 / 3)

    @jax.jit
    def f(scale):
        C.check_points(x, "x")
        C.check_weights(w, 3, "a")
        return scale * x

    np.testing.assert_allclose(f(2.0), 2.0)


# -- optimal transport ----------------------------------------------------------------------------


def test_positive_vector():
    np.testing.assert_allclose(C.check_positive_vector(0.5, "threshold", length=3), [0.5] * 3)
    assert C.check_positive_vector([1, 2], "epsilons").dtype == jnp.float32
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \(3,\)"):
        C.check_positive_vector([0.1, 0.2], "threshold", length=3)
    with pytest.raises(ValueError, match="epsilons must be a non-empty 1-D array"):
        C.check_positive_vector([], "epsilons")
    with pytest.raises(ValueError, match="epsilons must all be finite numbers > 0"):
        C.check_positive_vector([0.1, np.nan], "epsilons")
    with pytest.raises(ValueError, match=r"alphas must all lie in \(0, 1\]"):
        C.check_positive_vector([0.5, 1.5], "alphas", high=1.0)
    with pytest.raises(TypeError, match="epsilons must"):
        C.check_positive_vector(np.array(["a"]), "epsilons")
    with pytest.raises(TypeError, match="epsilons must hold real numbers"):
        C.check_positive_vector(np.array([1j]), "epsilons")


def test_guard_potentials_under_jit():
    guarded = jax.jit(lambda f, w: C.guard_potentials(f, w, "f"))
    w = jnp.array([0.0, 0.5, 0.5])
    f = jnp.array([-jnp.inf, 1.0, 2.0])  # -inf where the weight is zero: allowed
    np.testing.assert_array_equal(guarded(f, w), f)
    with pytest.raises(Exception, match="f: the Sinkhorn potentials contain NaN"):
        jax.block_until_ready(guarded(f.at[1].set(jnp.nan), w))


def test_bool():
    assert C.check_bool(np.True_, "flag") is True
    with pytest.raises(TypeError, match="flag must be a bool"):
        C.check_bool(1, "flag")


def test_times_with_an_open_lower_end():
    assert C.check_times(np.array([0.5, 3.0]), high=np.inf, low_open=True) is not None
    with pytest.raises(ValueError, match=r"t must lie in \(0, inf\], got \[0.0\]"):
        C.check_times(np.array([0.0, 1.0]), high=np.inf, low_open=True)
    with pytest.raises(ValueError, match=r"s must lie in \[0, 1\]"):
        C.check_times(1.5, "s")
    with pytest.raises(TypeError, match="real number"):
        C.check_times("soon")


def test_key():
    key = jax.random.key(0)
    assert C.check_key(key) is key
    legacy = C.check_key(jax.random.PRNGKey(0))
    assert legacy.shape == (2,) and legacy.dtype == jnp.uint32
    with pytest.raises(TypeError, match="seed must be a JAX PRNG key"):
        C.check_key(0, "seed")
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        C.check_key(np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="keys must be a single PRNG key"):
        C.check_key(jax.random.split(key, 3), "keys")
    assert jax.jit(C.check_key)(key).shape == ()  # a traced key is a key
