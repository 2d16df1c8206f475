"""Input checks shared by the public functions of ``otdiff``.

They run on concrete values, outside jitted code: each raises a ``ValueError`` or ``TypeError``
that names the argument and the accepted range. Under a JAX transformation (the values are
tracers) the value checks are skipped and only shapes are checked, so the checks cost nothing in
hot loops; a public function calls them once, before it enters ``jit``.

Inside jitted cores the conditions that would otherwise fail silently (a non-positive
regularisation, non-finite inputs or outputs, weights that do not sum to one) are guarded with
``equinox.error_if`` through the ``guard_*`` functions below: a traced call with a bad value then
raises at run time instead of returning NaN, with a message naming the argument (an
``EquinoxRuntimeError`` under ``equinox.filter_jit``; under ``jax.jit`` the same message inside
XLA's runtime error). They cost one reduction and a branch per call, never per iteration. Every weight check uses
the one tolerance :data:`WEIGHT_ATOL`.

A guard whose condition is known at trace time (a Python float) compiles to nothing. A guard on a
traced value raises through a host callback, and JAX never writes a program with a host callback
to its persistent compilation cache: such a program is compiled again in every new process (in
our runs of the energy/SMC chapter on an idle machine, 75 s with the guards against 40 s without,
once the cache was warm). The environment variable ``OTDIFF_JIT_GUARDS=0`` turns the ``guard_*``
functions into no-ops (read when a program is traced), for runs that value the cache over the
run-time checks, such as a second execution of already-tested notebooks; the eager checks stay.
"""

from __future__ import annotations

import math
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "check_positive",
    "check_nonnegative",
    "check_in_range",
    "check_int",
    "check_points",
    "check_same_dim",
    "check_weights",
    "check_finite",
    "check_weighted_clouds",
    "check_iterations",
    "check_choice",
    "check_times",
    "check_log_weights",
    "check_nonnegative_weights",
    "check_mask",
    "check_key",
    "WEIGHT_ATOL",
    "GUARDS_ENV_VAR",
    "guards_enabled",
    "guard_positive",
    "guard_nonnegative",
    "guard_in_range",
    "guard_less",
    "guard_finite",
    "guard_log_weights",
    "guard_simplex",
]

#: The one tolerance on ``|sum(w) - 1|`` for probability weights, eager and jitted alike.
WEIGHT_ATOL = 1e-4


def is_concrete(x: Any) -> bool:
    """True unless ``x`` is (or contains) a JAX tracer, i.e. we are inside a transformation."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _scalar(value: Any, name: str) -> float | None:
    if not is_concrete(value):
        return None
    try:
        arr = np.asarray(value)
    except Exception:
        raise TypeError(f"{name} must be a real number, got {value!r}.") from None
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real scalar, got {value!r}.")
    return float(arr)


def check_positive(value: Any, name: str) -> Any:
    """``value`` must be a finite real number > 0."""
    v = _scalar(value, name)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def check_nonnegative(value: Any, name: str) -> Any:
    """``value`` must be a finite real number >= 0."""
    v = _scalar(value, name)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


def check_in_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """``value`` must lie in the interval from ``low`` to ``high`` (open ends as flagged)."""
    v = _scalar(value, name)
    if v is None:
        return value
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (math.isfinite(v) and ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}.")
    return value


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` must be a Python/NumPy integer within ``[low, high]`` (a static size)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}.")
    return int(value)


def check_finite(x: Any, name: str) -> Any:
    """No NaN or infinity in the array ``x`` (skipped under a transformation)."""
    # NumPy, not jax.numpy: inside a trace, jnp on a concrete array would be staged out.
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def check_points(x: Any, name: str, *, min_points: int = 1) -> jax.Array:
    """A point cloud: a finite floating array of shape ``(n, d)`` with ``n >= min_points``."""
    try:
        arr = jnp.asarray(x)
    except Exception:
        raise TypeError(
            f"{name} must be an array of shape (n, d), got {type(x).__name__}."
        ) from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {arr.shape}.")
    if arr.shape[0] < min_points or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must hold at least {min_points} point(s) of dimension >= 1, got shape {arr.shape}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    check_finite(arr, name)
    return arr


def check_same_dim(x: jax.Array, y: jax.Array, names: tuple[str, str] = ("x", "y")) -> None:
    """Two point clouds must live in the same dimension."""
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same dimension, "
            f"got {x.shape[-1]} and {y.shape[-1]}."
        )


def check_weights(w: Any, n: int | None, name: str, *, atol: float = WEIGHT_ATOL) -> jax.Array:
    """Probability weights: shape ``(n,)``, non-negative, summing to one within :data:`WEIGHT_ATOL`.

    ``w=None`` means uniform weights over ``n`` points. With ``n=None`` any length ``>= 1`` is
    accepted (the weights of a particle system, whose size they set).
    """
    if w is None:
        if n is None:
            raise ValueError(f"{name} must be an array of shape (n,), got None.")
        return jnp.full((n,), 1.0 / n)
    arr = jnp.asarray(w)
    if n is None:
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"{name} must have shape (n,) with n >= 1, got shape {arr.shape}.")
        n = arr.shape[0]
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its points, got {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        check_finite(arr, name)
        if np.any(np.asarray(arr) < 0):
            raise ValueError(f"{name} must be non-negative.")
        total = float(np.sum(np.asarray(arr, dtype=np.float64)))
        if abs(total - 1.0) > atol:
            raise ValueError(f"{name} must sum to one (within {atol:g}), got a sum of {total:.6g}.")
    return arr


def check_weighted_clouds(x: Any, y: Any, a: Any, b: Any):
    """Two weighted point clouds in one dimension and one floating dtype: ``(x, y, a, b)``."""
    x = check_points(x, "x")
    y = check_points(y, "y")
    check_same_dim(x, y)
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    a = check_weights(a, x.shape[0], "a").astype(dtype)
    b = check_weights(b, y.shape[0], "b").astype(dtype)
    return x, y, a, b


def check_iterations(max_iterations: Any, inner_iterations: Any) -> tuple[int, int]:
    """Sinkhorn's loop sizes: positive integers, ``max_iterations`` a multiple of the inner one.

    ott-jax runs whole blocks of ``inner_iterations`` and checks the error after each block, so
    any other ``max_iterations`` would silently overshoot.
    """
    max_iterations = check_int(max_iterations, "max_iterations", low=1)
    inner_iterations = check_int(inner_iterations, "inner_iterations", low=1)
    if max_iterations % inner_iterations:
        raise ValueError(
            f"max_iterations must be a multiple of inner_iterations={inner_iterations} "
            f"(errors are checked every inner_iterations), got {max_iterations}."
        )
    return max_iterations, inner_iterations


def check_choice(value: Any, name: str, options) -> Any:
    """``value`` must be one of ``options`` (a static choice: a method, a mode, a schedule)."""
    if not isinstance(value, str | int) or value not in tuple(options):
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}.")
    return value


def check_times(t: Any, name: str = "t", *, low: float = 0.0, high: float = 1.0) -> Any:
    """Diffusion times: finite, in ``[low, high]`` (skipped under a transformation)."""
    if is_concrete(t):
        arr = np.asarray(t, dtype=float)
        ok = np.isfinite(arr) & (arr >= low) & (arr <= high)
        if not np.all(ok):
            bad = arr[~ok].ravel()[:3]
            raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {bad.tolist()}.")
    return t


def check_log_weights(log_weights: Any, name: str = "log_weights") -> jax.Array:
    """Unnormalised log-weights: shape ``(n,)``, no NaN, no ``+inf``, not all ``-inf``."""
    arr = jnp.asarray(log_weights)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n,) with n >= 1, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        a = np.asarray(arr)
        if np.any(np.isnan(a)):
            raise ValueError(f"{name} contains NaN: every log-weight must be a number or -inf.")
        if np.any(a == np.inf):
            raise ValueError(f"{name} contains +inf: log-weights must be finite or -inf.")
        if np.all(a == -np.inf):
            raise ValueError(f"{name} are all -inf: at least one particle needs positive weight.")
    return arr


def check_nonnegative_weights(w: Any, n: int, name: str = "weights") -> jax.Array:
    """Weights of a combination (not probabilities): shape ``(n,)``, finite, >= 0, not all zero."""
    arr = jnp.atleast_1d(jnp.asarray(w, dtype=jnp.result_type(float)))
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per term, got {arr.shape}.")
    if is_concrete(arr):
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)) or np.any(a < 0) or not np.any(a > 0):
            raise ValueError(f"{name} must be finite, >= 0 and not all zero, got {a.tolist()}.")
    return arr


def check_mask(mask: Any, n: int, name: str = "mask") -> jax.Array | None:
    """``None``, or ``(n,)`` booleans marking the valid rows of an array of ``n`` rows."""
    if mask is None:
        return None
    arr = jnp.asarray(mask)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its rows, got {arr.shape}.")
    return arr.astype(bool)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """One JAX PRNG key: a typed key of shape ``()`` (``jax.random.key(seed)``) or a legacy
    ``uint32`` key of shape ``(2,)`` (``jax.random.PRNGKey(seed)``); returned as a JAX array.

    A batch of keys, an integer seed or anything else is refused with a ``TypeError`` or
    ``ValueError`` naming the argument (a key is never silently made from a seed).
    """
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got a batch of shape {key.shape}.")
        return key
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if isinstance(key, jax.Array | np.ndarray) and dtype == np.uint32 and shape == (2,):
        return jnp.asarray(key)
    raise TypeError(
        f"{name} must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}"
        + (f" of shape {shape}" if shape is not None else "")
        + "."
    )


# -- guards for jitted cores ------------------------------------------------------------------------
# Under ``jit`` the eager checks above see tracers and skip their value checks; these run inside
# the compiled program and raise at run time (see the module docstring).

#: The environment variable that switches the ``guard_*`` functions off (``0``, ``off``, ``false``).
GUARDS_ENV_VAR = "OTDIFF_JIT_GUARDS"


def guards_enabled() -> bool:
    """Whether the ``guard_*`` functions emit run-time checks (``$OTDIFF_JIT_GUARDS``, default on)."""
    value = os.environ.get(GUARDS_ENV_VAR, "1").strip().lower()
    return value not in ("0", "off", "false", "no")


def _error_if(x: Any, bad: Any, msg: str) -> Any:
    return eqx.error_if(x, bad, msg) if guards_enabled() else x


def guard_positive(value: jax.Array, name: str) -> jax.Array:
    """``value`` (a scalar or array) unchanged, or a run-time error unless it is finite and > 0."""
    value = jnp.asarray(value)
    bad = jnp.any(~(jnp.isfinite(value) & (value > 0)))
    return _error_if(value, bad, f"{name} must be a finite number > 0.")


def guard_nonnegative(value: jax.Array, name: str) -> jax.Array:
    """``value`` unchanged, or a run-time error unless it is finite and >= 0."""
    value = jnp.asarray(value)
    bad = jnp.any(~(jnp.isfinite(value) & (value >= 0)))
    return _error_if(value, bad, f"{name} must be a finite number >= 0.")


def guard_in_range(
    value: jax.Array,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> jax.Array:
    """``value`` unchanged, or a run-time error unless it lies in the interval (ends as flagged)."""
    value = jnp.asarray(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    bad = jnp.any(~(jnp.isfinite(value) & ok_low & ok_high))
    return _error_if(value, bad, f"{name} must lie in {interval}.")


def guard_less(low: jax.Array, high: jax.Array, names: tuple[str, str]) -> tuple:
    """``(low, high)`` unchanged, or a run-time error unless ``low < high`` everywhere."""
    low, high = jnp.asarray(low), jnp.asarray(high)
    low = _error_if(low, jnp.any(~(low < high)), f"{names[0]} must be smaller than {names[1]}.")
    return low, high


def guard_finite(x: Any, name: str) -> Any:
    """The pytree ``x`` unchanged, or a run-time error if any floating leaf holds NaN or inf."""
    leaves = [
        leaf
        for leaf in jax.tree_util.tree_leaves(x)
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return x
    bad = jnp.any(jnp.stack([jnp.any(~jnp.isfinite(leaf)) for leaf in leaves]))
    return _error_if(x, bad, f"{name} contains NaN or infinite values.")


def guard_log_weights(log_weights: jax.Array, name: str = "log_weights") -> jax.Array:
    """Log-weights unchanged, or a run-time error if any is NaN or ``+inf`` (``-inf`` is a zero
    weight and allowed)."""
    bad = jnp.any(jnp.isnan(log_weights) | (log_weights == jnp.inf))
    return _error_if(
        log_weights,
        bad,
        f"{name} became NaN or +inf: a potential returned NaN (check for inf - inf or an "
        "overflow; potentials should be computed in log space).",
    )


def guard_simplex(w: jax.Array, name: str, *, atol: float = WEIGHT_ATOL) -> jax.Array:
    """Weights ``w`` unchanged, or a run-time error unless they are >= 0 and sum to one."""
    total = jnp.sum(w.astype(jnp.promote_types(w.dtype, jnp.float32)))
    bad = jnp.any(w < 0) | (jnp.abs(total - 1.0) > atol) | ~jnp.isfinite(total)
    return _error_if(w, bad, f"{name} must be non-negative and sum to one (within {atol:g}).")


# -- optimal transport -------------------------------------------------------------------------------
# Checks and guards that the optimal transport modules (``otdiff.ot``) share.

__all__ += ["check_bool", "check_positive_vector", "guard_potentials"]


def check_bool(value: Any, name: str) -> bool:
    """``value`` must be a Python or NumPy bool (a static flag); returned as a Python bool."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r}.")
    return bool(value)


def check_positive_vector(
    values: Any, name: str, *, length: int | None = None, high: float | None = None
) -> jax.Array:
    """A 1-D floating array of finite numbers > 0 (and <= ``high`` if given).

    With ``length`` (a per-step setting) a scalar is repeated ``length`` times and any other shape
    than ``(length,)`` is refused; without it the array must be 1-D and non-empty. Value checks
    are skipped under a transformation, as everywhere in this module.
    """
    try:
        arr = jnp.asarray(values)
    except Exception:
        raise TypeError(f"{name} must be a 1-D array of numbers, got {values!r}.") from None
    if not jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    if length is not None:
        if arr.ndim == 0:
            arr = jnp.full((length,), arr)
        if arr.shape != (length,):
            raise ValueError(
                f"{name} must be a scalar or have shape ({length},) (one per step), "
                f"got shape {arr.shape}."
            )
    elif arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        v = np.asarray(arr)
        ok = np.isfinite(v) & (v > 0) & (True if high is None else v <= high)
        if not np.all(ok):
            allowed = "be finite numbers > 0" if high is None else f"lie in (0, {high:g}]"
            raise ValueError(f"{name} must all {allowed}, got {v}.")
    return arr


def guard_potentials(f: jax.Array, weights: jax.Array, name: str) -> jax.Array:
    """A dual potential ``f`` unchanged, or a run-time error if it is NaN or infinite where the
    weight is positive (ott-jax sets the potential of a zero-weight point to ``-inf``)."""
    bad = jnp.any((weights > 0) & ~jnp.isfinite(f))
    return _error_if(
        f,
        bad,
        f"{name}: the Sinkhorn potentials contain NaN or infinite values (with lse_mode=False "
        "the kernel underflows at small epsilon: use lse_mode=True or a larger epsilon).",
    )
