"""The checks gathered into otdiff._checks from the diffusion, SMC and SPELL modules, and the guards
that hold under jit (a traced bad value raises at run time instead of passing silently)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import _checks as C


def test_choice_and_times():
    assert C.check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        C.check_choice("c", "mode", ("a", "b"))
    with pytest.raises(ValueError, match="mode must be one of"):
        C.check_choice(["a"], "mode", ("a", "b"))
    C.check_times(jnp.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got \[1.5\]"):
        C.check_times(jnp.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="t must lie"):
        C.check_times(float("nan"))


@pytest.mark.parametrize(
    "bad, match",
    [
        (jnp.array([0.0, jnp.nan]), "NaN"),
        (jnp.array([0.0, jnp.inf]), r"\+inf"),
        (jnp.array([-jnp.inf, -jnp.inf]), "all -inf"),
        (jnp.zeros((2, 2)), "shape"),
        (jnp.zeros((0,)), "shape"),
    ],
)
def test_log_weights(bad, match):
    with pytest.raises(ValueError, match=f"log_weights.*{match}|{match}"):
        C.check_log_weights(bad)


def test_weights_of_any_length_and_one_tolerance():
    np.testing.assert_allclose(C.check_weights(jnp.array([0.25, 0.75]), None, "w"), [0.25, 0.75])
    with pytest.raises(ValueError, match=r"w must have shape \(n,\)"):
        C.check_weights(jnp.ones((2, 2)) / 4, None, "w")
    # the one tolerance: 1e-4 on the sum
    C.check_weights(jnp.array([0.5, 0.5 + 0.5 * C.WEIGHT_ATOL]), None, "w")
    with pytest.raises(ValueError, match="sum to one"):
        C.check_weights(jnp.array([0.5, 0.5 + 2 * C.WEIGHT_ATOL]), None, "w")


def test_nonnegative_weights_and_mask():
    np.testing.assert_allclose(C.check_nonnegative_weights([0.0, 2.0], 2), [0.0, 2.0])
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("inf")]):
        with pytest.raises(ValueError, match="weights must be finite, >= 0 and not all zero"):
            C.check_nonnegative_weights(bad, 2)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        C.check_nonnegative_weights([1.0, 1.0], 3)
    assert C.check_mask(None, 3) is None
    assert C.check_mask([1, 0, 1], 3).dtype == jnp.bool_
    with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
        C.check_mask([True], 3)


@pytest.mark.parametrize(
    "guard, good, bad, match",
    [
        (lambda v: C.guard_positive(v, "beta"), 1.0, -1.0, "beta must be a finite number > 0"),
        (
            lambda v: C.guard_nonnegative(v, "radius"),
            0.0,
            -0.1,
            "radius must be a finite number >= 0",
        ),
        (
            lambda v: C.guard_in_range(v, "kappa", 0.0, 1.0, low_open=True),
            1.0,
            0.0,
            r"kappa must lie in \(0, 1\]",
        ),
        (lambda v: C.guard_less(v, 1.0, ("t_min", "t_max"))[0], 0.5, 1.0, "t_min must be smaller"),
        (lambda v: C.guard_finite(v * jnp.ones(2), "x"), 1.0, jnp.nan, "x contains NaN"),
        (
            lambda v: C.guard_log_weights(jnp.array([0.0, v]), "lw"),
            -jnp.inf,
            jnp.nan,
            "lw became NaN",
        ),
        (
            lambda v: C.guard_simplex(jnp.array([0.5, v]), "w"),
            0.5,
            0.6,
            "w must be non-negative and sum to one",
        ),
    ],
)
def test_guards_raise_under_jit(guard, good, bad, match):
    f = jax.jit(guard)
    jax.block_until_ready(f(good))
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(f(bad))


def test_guards_can_be_switched_off(monkeypatch):
    """OTDIFF_JIT_GUARDS=0 makes the guards no-ops (programs stay cacheable); on by default."""
    assert C.guards_enabled()
    monkeypatch.setenv(C.GUARDS_ENV_VAR, "0")
    assert not C.guards_enabled()
    f = jax.jit(lambda v: C.guard_positive(v, "beta"))
    np.testing.assert_allclose(f(-1.0), -1.0)
