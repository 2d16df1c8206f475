"""Count the programs JAX traces for compilation, to check that a new value does not recompile.

A jitted function traces (and compiles) once per new static signature; a dynamic argument that
changes value must reuse the compiled program. ``jax.jit``'s ``_cache_size()`` is not a reliable
witness of that: it counts the entries of the C++ dispatch cache, which a call may bypass (it
reads 0 after two calls that did compile once). JAX reports every top-level trace to its
monitoring listeners with the traced function's name; this module counts those reports::

    f(0.5)                      # the first call compiles, outside the block
    with traces() as seen:
        f(1.2)
    assert seen["f"] == 0       # a new value of a dynamic argument: no new program
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import jax

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def traces() -> Iterator[collections.Counter]:
    """A ``Counter`` of the functions traced for ``jax.jit`` inside the block, by name (a
    lambda's name is ``"<lambda>"``). Traces nested inside another trace are not reported."""
    seen: collections.Counter = collections.Counter()

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == _TRACE_EVENT:
            seen[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
