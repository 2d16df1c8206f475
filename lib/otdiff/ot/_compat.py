"""One repair to ott-jax 0.6.0, needed under JAX >= 0.9.

ott-jax's online point clouds (``PointCloud(..., batch_size=...)``, which recompute the cost
matrix a block of rows at a time instead of storing it) call
``jax.interpreters.batching.is_vmappable``; JAX 0.9 removed that name from the public module,
so every online solve fails with an ``AttributeError`` (ott-jax issue 700). ott-jax fixed it after
its 0.6.0 release (pull request 701) by binding the name to JAX's own submodule; this module does
the same, once, on import, and does nothing when ott-jax already has the name (a later release).
"""

from __future__ import annotations

import ott.utils

if not hasattr(ott.utils.batching, "is_vmappable"):  # pragma: no branch (ott-jax 0.6.0)
    import jax._src.interpreters.batching as _batching

    ott.utils.batching = _batching
