"""Checks for the exercises that ask for code: the reader's function against the library's.

An exercise cell defines a function; the next cell calls :func:`check` with that function, the
library's function and one fixed case. The check says, in words, what differs (a shape, a value
and by how much, a NaN), and says "not attempted yet" while the function still raises
``NotImplementedError`` (as it does in the student edition of the book before it is written).

Taught in: book/ot/01_sinkhorn.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["check"]


def _leaves(tree: Any) -> list[np.ndarray]:
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    if isinstance(tree, list | tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [np.asarray(tree)]


def check(
    name: str,
    student: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    **kwargs: Any,
) -> bool:
    """Call ``student`` and ``reference`` on the same case and compare their results.

    Both are called as ``f(*args, **kwargs)``; their results (an array, a number, or a tuple,
    list or dict of them) must have the same structure and shapes and agree to
    ``|s - r| <= atol + rtol |r|`` entry-wise.

    Args:
        name: the exercise's name, printed in every message.
        student: the reader's function.
        reference: the library's function (or a closure over it) for the same case.
        *args, **kwargs: the fixed case.
        rtol, atol: the tolerances, each >= 0.

    Returns:
        ``True`` when the results agree; ``False`` while ``student`` raises
        ``NotImplementedError`` (not attempted yet), with a message saying so.

    Raises:
        ValueError: for negative tolerances.
        AssertionError: when the results differ, saying how (structure, shape, NaN, the largest
            error and where), or when ``student`` fails with another exception.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    try:
        got = student(*args, **kwargs)
    except NotImplementedError:
        print(f"{name}: not attempted yet (your function raises NotImplementedError).")
        return False
    except Exception as error:  # the reader's code: say what went wrong, in their terms
        raise AssertionError(
            f"{name}: your function raised {type(error).__name__}: {error}"
        ) from error
    expected = reference(*args, **kwargs)
    got_leaves, expected_leaves = _leaves(got), _leaves(expected)
    if len(got_leaves) != len(expected_leaves):
        raise AssertionError(
            f"{name}: your function returns {len(got_leaves)} array(s), the library "
            f"{len(expected_leaves)}."
        )
    for i, (g, e) in enumerate(zip(got_leaves, expected_leaves, strict=True)):
        where = f" (output {i})" if len(got_leaves) > 1 else ""
        if g.shape != e.shape:
            raise AssertionError(f"{name}{where}: shape {g.shape}, expected {e.shape}.")
        g, e = g.astype(np.float64), e.astype(np.float64)
        if not np.all(np.isfinite(g)):
            raise AssertionError(f"{name}{where}: your result has NaN or infinite entries.")
        error = np.abs(g - e)
        bound = atol + rtol * np.abs(e)
        if np.any(error > bound):
            worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.ndim else ()
            raise AssertionError(
                f"{name}{where}: differs from the library by up to {float(error.max()):.3g} "
                f"(at index {tuple(int(k) for k in worst)}: yours {float(g[worst]):.6g}, "
                f"the library's {float(e[worst]):.6g}; tolerance {atol:g} + {rtol:g}|r|)."
            )
    print(f"{name}: correct (agrees with the library).")
    return True
