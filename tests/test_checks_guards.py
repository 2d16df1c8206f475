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


@pytest.mark.parametrize(
    "guard, bad, match",
    [
        (lambda v: C.guard_positive(v, "beta"), -1.0, r"beta must be a finite number > 0, got -1"),
        (lambda v: C.guard_positive(v, "eps"), np.array([1.0, 0.0]), "eps must be a finite"),
        (lambda v: C.guard_nonnegative(v, "radius"), np.nan, "radius must be a finite number >= 0"),
        (lambda v: C.guard_in_range(v, "kappa", 0.0, 1.0, low_open=True), 2.0, r"\(0, 1\]"),
        (lambda v: C.guard_less(v, 0.5, ("t_min", "t_max")), 0.7, "t_min must be smaller"),
        (lambda v: C.guard_finite({"a": jnp.ones(2) * v}, "x"), jnp.inf, "x contains NaN"),
        (
            lambda v: C.guard_log_weights(jnp.array([0.0, v]), "lw"),
            jnp.inf,
            r"lw became NaN or \+inf",
        ),
        (lambda v: C.guard_simplex(jnp.array([0.5, v]), "w"), -0.5, "w must be non-negative"),
        (
            lambda v: C.guard_potentials(jnp.array([0.0, v]), jnp.ones(2) / 2, "f"),
            jnp.nan,
            "f: the",
        ),
    ],
)
def test_guards_on_concrete_values_raise_a_value_error_at_once(guard, bad, match):
    """On a concrete value a guard checks on the host: a ValueError, no program compiled."""
    with pytest.raises(ValueError, match=match):
        guard(bad)


def test_zero_weight_potentials_and_good_values_pass():
    np.testing.assert_array_equal(
        C.guard_potentials(jnp.array([-jnp.inf, 1.0]), [0.0, 1.0], "f"), [-jnp.inf, 1.0]
    )
    assert C.guard_positive(2.0, "beta") == 2.0
    assert C.guard_less(0.1, 0.5, ("t_min", "t_max")) == (0.1, 0.5)


def test_unguarded_traces_without_run_time_checks():
    """Under unguarded() (a context manager and a decorator) a traced guard adds nothing to the
    program, so no host callback keeps it out of JAX's persistent cache; concrete values are
    still checked; the switch is restored on exit, even after an error."""
    guarded = jax.jit(lambda v: C.guard_positive(v, "beta"))
    quiet = jax.jit(C.unguarded()(lambda v: C.guard_positive(v, "beta")))
    assert "callback" in guarded.lower(1.0).as_text()
    assert "callback" not in quiet.lower(1.0).as_text()
    np.testing.assert_allclose(quiet(-1.0), -1.0)
    assert C.guards_active()
    with pytest.raises(ValueError, match="beta"), C.unguarded():
        assert not C.guards_active()
        C.guard_positive(-1.0, "beta")
    assert C.guards_active()


def test_config_unguarded_is_the_same_switch():
    from otdiff import config

    with config.unguarded():
        assert not C.guards_active()
    assert C.guards_active()


@pytest.fixture
def callbacks_compiled(monkeypatch):
    """The number of host callbacks of every program XLA compiles during the test (JAX refuses
    to write a program with one to its persistent compilation cache)."""
    from jax._src import compiler

    seen: list[tuple[str, int]] = []
    original = compiler.compile_or_get_cached

    def spy(backend, computation, devices, options, host_callbacks, *args, **kwargs):
        seen.append((str(computation.operation.attributes["sym_name"]), len(host_callbacks)))
        return original(backend, computation, devices, options, host_callbacks, *args, **kwargs)

    monkeypatch.setattr(compiler, "compile_or_get_cached", spy)
    return seen


def test_eager_calls_compile_no_host_callback(callbacks_compiled):
    """Called with concrete values, the public functions run only callback-free (cacheable)
    programs; inside the caller's jit the same call carries the guards."""
    from otdiff import ot
    from otdiff.data import gaussian_mixture
    from otdiff.diffusion import LinearVP
    from otdiff.diffusion import energy as en

    # shapes no other test uses, so that the programs compile here
    x = jax.random.normal(jax.random.key(0), (13, 2))
    ot.solve(x, x + 1.0, 0.5)
    process = LinearVP()
    energy = en.MixtureEnergy(gaussian_mixture([[-2.0, 0.0], [2.0, 0.0]], 0.5), process)
    en.low_temperature_smc(
        jax.random.key(0), energy, process, 17, 2, inverse_temperature=2.0, n_steps=3
    )
    assert callbacks_compiled, "nothing was compiled"
    assert [name for name, n in callbacks_compiled if n] == []

    jax.jit(lambda eps: ot.solve(x, x + 1.0, eps).f)(0.5)
    assert callbacks_compiled[-1][1] > 0
