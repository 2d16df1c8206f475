"""Input checks and guards shared by the public functions of ``otdiff``.

**Checks** (``check_*``) run on concrete values, before a public function enters ``jit``: each
raises a ``ValueError`` or ``TypeError`` that names the argument and the accepted range. On a
tracer (the function is inside a ``jit``, ``vmap`` or ``grad`` of the caller) the value checks
are skipped and only shapes and types are checked.

**Guards** (``guard_*``) cover the conditions that would otherwise fail silently (a non-positive
regularisation, times outside their interval, non-finite inputs or outputs, weights off the
simplex) at the *boundary* of a public function, on what it takes and what it returns. On a
concrete value a guard checks at once, on the host, and raises a ``ValueError``; on a traced value
it attaches ``equinox.error_if`` to the value, so that the caller's compiled program raises at run
time with a message naming the argument (an ``EquinoxRuntimeError``; under ``jax.jit`` the same
message inside XLA's runtime error) instead of returning NaN. Every weight check uses the one
tolerance :data:`WEIGHT_ATOL`.

**Why only at the boundary.** A run-time check is a host callback, and JAX never writes a program
with a host callback to its persistent compilation cache: such a program compiles again in every
new process (in our runs the diffusion chapters took 54 to 75 s instead of 40 to 44 s with a warm
cache while their cores held guards). So the jitted cores and the loops between the boundaries
trace under :func:`unguarded` (which also decorates a core's body): a public function
called with concrete values runs only callback-free, cacheable programs and checks its outputs
on the host; called inside the caller's transformation, it adds its guards to the caller's program
only. :class:`otdiff.ui.Explorer` traces its compute function unguarded too (its sliders are
range-checked before every call).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
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
    "check_sphere_points",
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
    "check_callable",
    "check_point_batch",
    "check_same_shape",
    "check_potential",
    "WEIGHT_ATOL",
    "unguarded",
    "guards_active",
    "guard",
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
    arr = _as_array(x, name, "(n, d)")
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


def check_sphere_points(x: Any, name: str, *, batch: bool = False, dim: int = 3) -> jax.Array:
    """Points of the unit sphere in :math:`\\mathbb R^{dim}`: a finite floating array whose last
    axis has size ``dim``; a cloud ``(n, dim)`` with ``n >= 1``, or with ``batch=True`` any batch
    shape ``(..., dim)`` (a single point, a stack, an empty batch). The norm is not checked."""
    shape = f"(..., {dim})" if batch else f"(n, {dim})"
    arr = _as_array(x, name, shape)
    if arr.shape[-1:] != (dim,) or (not batch and (arr.ndim != 2 or arr.shape[0] < 1)):
        raise ValueError(
            f"{name} must be points of the sphere of shape {shape} (a last axis of size {dim}"
            + ("" if batch else ", n >= 1")
            + f"), got shape {arr.shape}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    check_finite(arr, name)
    return arr


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


def check_weighted_clouds(
    x: Any, y: Any, a: Any, b: Any, names: tuple[str, str, str, str] = ("x", "y", "a", "b")
):
    """Two weighted point clouds in one dimension and one floating dtype: ``(x, y, a, b)``
    (``names``: the caller's names for them, used in the messages)."""
    x = check_points(x, names[0])
    y = check_points(y, names[1])
    check_same_dim(x, y, names[:2])
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    a = check_weights(a, x.shape[0], names[2]).astype(dtype)
    b = check_weights(b, y.shape[0], names[3]).astype(dtype)
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


def check_times(
    t: Any, name: str = "t", *, low: float = 0.0, high: float = 1.0, low_open: bool = False
) -> Any:
    """Times (a scalar or an array): finite, in ``[low, high]``, or ``(low, high]`` with
    ``low_open`` (skipped under a transformation)."""
    if is_concrete(t):
        try:
            if isinstance(t, str | bytes):  # np.asarray("0.5", dtype=float) would read it
                raise TypeError
            arr = np.asarray(t, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a real number or an array of them, got {t!r}."
            ) from None
        ok = np.isfinite(arr) & ((arr > low) if low_open else (arr >= low)) & (arr <= high)
        if not np.all(ok):
            bad = arr[~ok].ravel()[:3]
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise ValueError(f"{name} must lie in {interval}, got {bad.tolist()}.")
    return t


def check_point_batch(x: Any, name: str) -> jax.Array:
    """Points in any batch shape ``(..., d)``, ``d >= 1``: a single point ``(d,)``, a cloud, a
    stack of clouds or an empty batch (the argument of a pure map on points); a finite floating
    array (finiteness checked on concrete values only)."""
    arr = _as_array(x, name, "(..., d)")
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., d) with d >= 1, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    check_finite(arr, name)
    return arr


def check_same_shape(x: jax.Array, y: jax.Array, names: tuple[str, str] = ("x", "y")) -> None:
    """Two arrays of points paired one to one: the same dimension and the same batch shape."""
    check_same_dim(x, y, names)
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape (one {names[1]} per "
            f"{names[0]}), got {x.shape} and {y.shape}."
        )


def check_potential(g: Any, n: int, name: str, of: str, dtype: Any = None) -> jax.Array:
    """A dual potential: one finite value per point of ``of`` (``n`` points), shape ``(n,)``."""
    arr = _as_array(g, name, f"({n},)")
    if arr.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) (one value per point of {of}), got {arr.shape}."
        )
    arr = arr.astype(dtype if dtype is not None else jnp.result_type(arr.dtype, float))
    return check_finite(arr, name)


def check_callable(fn: Any, name: str, signature: str = "f(x, t)") -> Any:
    """``fn`` must be callable (a function, a module, a partial), documented as ``signature``."""
    if not callable(fn):
        raise TypeError(f"{name} must be a function {signature}, got {type(fn).__name__}.")
    return fn


def _as_array(x: Any, name: str, shape: str) -> jax.Array:
    """``jnp.asarray(x)``, or a ``TypeError`` naming the argument (``None``, a string, ...)."""
    try:
        arr = jnp.asarray(x)
    except Exception:
        arr = None
    if arr is None or not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"{name} must be an array of shape {shape}, got {type(x).__name__}.")
    return arr


def check_log_weights(log_weights: Any, name: str = "log_weights") -> jax.Array:
    """Unnormalised log-weights: shape ``(n,)``, no NaN, no ``+inf``, not all ``-inf``."""
    arr = _as_array(log_weights, name, "(n,)")
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


def check_mask(mask: Any, n: int, name: str = "mask") -> jax.Array | None:
    """``None``, or ``(n,)`` booleans marking the valid rows of an array of ``n`` rows."""
    if mask is None:
        return None
    arr = jnp.asarray(mask)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its rows, got {arr.shape}.")
    return arr.astype(bool)


# -- guards: eager on concrete values, run-time checks on traced ones ---------------------------------
# A guard sits at the boundary of a public function, on an input it takes or an output it returns.
# On a concrete value it checks now (NumPy, on the host) and raises a ValueError; on a traced value
# (the function is inside the caller's ``jit``/``vmap``/``grad``) it attaches ``equinox.error_if``
# to the value, so the caller's program raises at run time. The loops and jitted cores between the
# boundaries trace with the guards off (:func:`unguarded`), so a library program never holds a
# host callback and JAX's persistent compilation cache can store it (see the module docstring).

_GUARDS = contextvars.ContextVar("otdiff_guards", default=True)


@contextlib.contextmanager
def unguarded():
    """Trace without run-time guards: a ``guard_*`` on a traced value returns it unchanged.

    A context manager, and a decorator (``@unguarded()``, below ``jax.jit``): every jitted core of
    the package traces its body this way, and so do the loops of the public functions, whose
    boundaries are guarded. A caller whose traced values are checked already (the sliders of
    :class:`otdiff.ui.Explorer`, a chapter's own constants) may trace unguarded too, so that its
    program holds no host callback and stays in JAX's persistent compilation cache. Guards on
    concrete values still check.
    """
    token = _GUARDS.set(False)
    try:
        yield
    finally:
        _GUARDS.reset(token)


def guards_active() -> bool:
    """Whether a guard on a traced value emits a run-time check here (false under :func:`unguarded`)."""
    return _GUARDS.get()


def guard(x: Any, bad: Any, msg: str) -> Any:
    """``x`` unchanged; raise ``ValueError(msg)`` now if ``bad`` is concrete and true, or at run time
    (``equinox.error_if``) if it is traced and the guards are active. The generic guard: the
    ``guard_*`` functions below compute ``bad`` for their condition and call it."""
    if is_concrete(bad):
        if bool(np.any(bad)):
            raise ValueError(msg)
        return x
    return eqx.error_if(x, bad, msg) if guards_active() else x


def _xp(*values: Any):
    """NumPy for concrete values (checked on the host, no dispatch), ``jax.numpy`` for traced ones."""
    return np if is_concrete(values) else jnp


def _host(value: Any) -> Any:
    return np.asarray(value) if is_concrete(value) else jnp.asarray(value)


def guard_positive(value: Any, name: str) -> Any:
    """``value`` (a scalar or array), guarded to be finite and > 0."""
    if is_concrete(value) and np.ndim(value) == 0:
        return check_positive(value, name)
    v, xp = _host(value), _xp(value)
    bad = xp.any(~(xp.isfinite(v) & (v > 0)))
    return guard(value, bad, f"{name} must be a finite number > 0.")


def guard_nonnegative(value: Any, name: str) -> Any:
    """``value`` guarded to be finite and >= 0."""
    if is_concrete(value) and np.ndim(value) == 0:
        return check_nonnegative(value, name)
    v, xp = _host(value), _xp(value)
    bad = xp.any(~(xp.isfinite(v) & (v >= 0)))
    return guard(value, bad, f"{name} must be a finite number >= 0.")


def guard_in_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """``value`` guarded to lie in the interval from ``low`` to ``high`` (open ends as flagged)."""
    if is_concrete(value) and np.ndim(value) == 0:
        return check_in_range(value, name, low, high, low_open=low_open, high_open=high_open)
    v, xp = _host(value), _xp(value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    bad = xp.any(~(xp.isfinite(v) & ok_low & ok_high))
    return guard(value, bad, f"{name} must lie in {interval}.")


def guard_less(low: Any, high: Any, names: tuple[str, str]) -> tuple:
    """``(low, high)`` guarded so that ``low < high`` everywhere."""
    lo, hi = _host(low), _host(high)
    bad = _xp(low, high).any(~(lo < hi))
    if is_concrete(bad) and bool(bad):
        raise ValueError(f"{names[0]} must be smaller than {names[1]}, got {low!r} >= {high!r}.")
    return guard(low, bad, f"{names[0]} must be smaller than {names[1]}."), high


def guard_finite(x: Any, name: str) -> Any:
    """The pytree ``x`` guarded to hold no NaN or infinity in its floating leaves."""
    leaves = [
        leaf
        for leaf in jax.tree_util.tree_leaves(x)
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return x
    if is_concrete(leaves):
        bad = not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    else:
        bad = jnp.any(jnp.stack([jnp.any(~jnp.isfinite(leaf)) for leaf in leaves]))
    return guard(x, bad, f"{name} contains NaN or infinite values.")


def guard_log_weights(log_weights: Any, name: str = "log_weights") -> Any:
    """Log-weights guarded against NaN and ``+inf`` (``-inf`` is a zero weight and allowed)."""
    v, xp = _host(log_weights), _xp(log_weights)
    bad = xp.any(xp.isnan(v) | (v == np.inf))
    return guard(
        log_weights,
        bad,
        f"{name} became NaN or +inf: a potential returned NaN (check for inf - inf or an "
        "overflow; potentials should be computed in log space).",
    )


def guard_simplex(w: Any, name: str, *, atol: float = WEIGHT_ATOL) -> Any:
    """Weights ``w`` guarded to be >= 0 and to sum to one within :data:`WEIGHT_ATOL`."""
    v, xp = _host(w), _xp(w)
    total = xp.sum(v.astype(np.float64 if xp is np else jnp.promote_types(v.dtype, jnp.float32)))
    bad = xp.any(v < 0) | (xp.abs(total - 1.0) > atol) | ~xp.isfinite(total)
    return guard(w, bad, f"{name} must be non-negative and sum to one (within {atol:g}).")


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


def guard_potentials(f: Any, weights: Any, name: str) -> Any:
    """A dual potential ``f`` guarded to be finite where the weight is positive (ott-jax sets the
    potential of a zero-weight point to ``-inf``). ``f`` may carry leading batch axes."""
    v, w, xp = _host(f), _host(weights), _xp(f, weights)
    bad = xp.any((w > 0) & ~xp.isfinite(v))
    return guard(
        f,
        bad,
        f"{name}: the Sinkhorn potentials contain NaN or infinite values (with lse_mode=False "
        "the kernel underflows at small epsilon: use lse_mode=True or a larger epsilon).",
    )


# -- sharding across devices ------------------------------------------------------------------

#: The mesh axis the sharded paths split their points, particles or protected sets along (the
#: axis of ``otdiff.train.data_parallel_mesh``).
SHARD_AXIS = "data"

__all__ += ["SHARD_AXIS", "check_mesh", "place"]


def check_mesh(mesh: Any, size: int | None = None, name: str = "the leading size") -> Any:
    """``None``, or a ``jax.sharding.Mesh`` with a ``"data"`` axis whose length divides ``size``.

    Raises:
        TypeError: if ``mesh`` is not a ``Mesh``.
        ValueError: if it has no ``"data"`` axis, or ``size`` does not split evenly across it.
    """
    if mesh is None:
        return None
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(
            "mesh must be None or a jax.sharding.Mesh (e.g. otdiff.train.data_parallel_mesh()), "
            f"got {type(mesh).__name__}."
        )
    if SHARD_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {SHARD_AXIS!r}, got {mesh.axis_names}.")
    n_devices = mesh.shape[SHARD_AXIS]
    if size is not None and size % n_devices:
        raise ValueError(
            f"{name} must be a multiple of the number of devices on the mesh's {SHARD_AXIS!r} "
            f"axis ({n_devices}), got {size}."
        )
    return mesh


def place(tree: Any, mesh: Any, sharded: bool) -> Any:
    """Lay ``tree`` out on ``mesh``: split along its first axis (``sharded``) or replicated.

    A ``device_put`` for concrete arrays, a sharding constraint inside ``jit``; ``mesh=None``
    returns ``tree`` unchanged.
    """
    if mesh is None:
        return tree
    spec = jax.sharding.PartitionSpec(SHARD_AXIS) if sharded else jax.sharding.PartitionSpec()
    sharding = jax.sharding.NamedSharding(mesh, spec)
    if is_concrete(tree):
        return jax.device_put(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)
