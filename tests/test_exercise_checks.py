"""The chapters' code checks (``otdiff.exercise.check`` cells): the lecturer's solution passes,
the student edition's stub is "not attempted yet", and a plausible mistake fails with a message
that says what differs.

Each check runs its two cells of the chapter (the solution, then the check) alone, with the
chapter's imports, so that a check never depends on the rest of its chapter.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nbformat
import pytest

from otdiff import optim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import student  # noqa: E402

IMPORTS = """
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from otdiff import config, manifolds, optim, ot
from otdiff.ot import m3g
"""


def _unrolled_with_sums(x, y, epsilon, n_iterations, start):
    # the potentials' sums without the weights 1/n and 1/m
    def cost(points):
        C = jnp.sum((points[:, None] - y[None]) ** 2, -1)

        def body(_, fg):
            f, g = fg
            g = -epsilon * jax.nn.logsumexp((f[:, None] - C) / epsilon, axis=0)
            f = -epsilon * jax.nn.logsumexp((g[None, :] - C) / epsilon, axis=1)
            return f, g

        f, g = jax.lax.fori_loop(0, n_iterations, body, (start(points, y), jnp.zeros(len(y))))
        return jnp.sum(f) + jnp.sum(g)

    return jax.grad(cost)(x)


def _variance_without_one_over_k(z):
    # the mean of the squared norms summed, not averaged, over the views
    k, n, _ = z.shape
    total, mean = 0.0, 0.0
    for view in range(k):
        shape = [1] * k
        shape[view] = n
        total = total + jnp.sum(z[view] ** 2, -1).reshape(shape)
        mean = mean + z[view].reshape(*shape, -1) / k
    return total - jnp.sum(mean**2, -1)


def _projections_without_gram_schmidt(g_main, g_aux1, g_aux2, ema, ema1, lam1, lam2):
    # projecting on ema, then on ema1 itself: the second projection undoes part of the first
    part1 = optim.tree_project(g_aux1, ema)
    part2 = optim.tree_project(optim.tree_project(g_aux2, ema), ema1)
    return jax.tree_util.tree_map(lambda g, x, y: g + lam1 * x + lam2 * y, g_main, part1, part2)


def _ou_one_key(key, kappas, n_points, n_steps, dt):
    # one key for every step: the same noise each time, a variance growing like t^2
    def one(kappa):
        def body(x, _):
            x = x - kappa * x * dt + jnp.sqrt(2 * dt) * jax.random.normal(key, x.shape)
            return x, jnp.var(x)

        return jax.lax.scan(body, jnp.zeros(n_points), None, length=n_steps)[1]

    return jax.vmap(one)(kappas)


#: chapter -> (the exercise's label, the function's name, a plausible mistake)
CHECKS = {
    "book/ot/01_sinkhorn.ipynb": (
        "sinkhorn-ex-4",
        "ot_gradient",
        lambda x, y, eps: 2 * x,  # the coupling forgotten
    ),
    "book/ot/02_sinkhorn_init.ipynb": ("init-ex-2", "unrolled_gradient", _unrolled_with_sums),
    "book/ot/03_progot.ipynb": (
        "progot-ex-1",
        "elapsed_times",
        lambda alphas: jnp.concatenate([jnp.zeros(1), jnp.cumsum(alphas)]),  # steps added
    ),
    "book/ot/05_m3g.ipynb": ("m3g-ex-variance", "variance_tensor", _variance_without_one_over_k),
    "book/diffusion/06_rdsb.ipynb": (
        "rdsb-ex-divergence",
        "projected_divergence",
        lambda a, x: -x.shape[-1] * (x @ a),  # the ambient dimension: tr(I), not tr(P_x)
    ),
    "book/optim/01_bloop.ipynb": (
        "bloop-ex-multi",
        "two_level_direction",
        _projections_without_gram_schmidt,
    ),
    "book/appendix/jax_primer.ipynb": ("primer-ex-vmap-scan", "ou_variances", _ou_one_key),
}


def _cells(path: str, label: str) -> tuple[str, str]:
    """The solution cell and the check cell of exercise ``label`` in the chapter ``path``."""
    cells = nbformat.read(ROOT / path, as_version=4).cells
    for i, cell in enumerate(cells[:-1]):
        if "solution" in cell.metadata.get("tags", []) and student.BEGIN in cell.source:
            check = cells[i + 1]
            if check.cell_type == "code" and re.search(
                rf'exercise\.check\(\s*"{re.escape(label)}"', check.source
            ):
                return cell.source, check.source
    raise AssertionError(f"{path}: no solution cell followed by the check of {label!r}")


def _run(solution: str, check: str, name: str, replacement=None) -> dict:
    namespace: dict = {}
    exec(IMPORTS, namespace)
    exec(solution, namespace)
    if replacement is not None:
        namespace[name] = replacement
    exec(check, namespace)
    return namespace


def test_every_code_exercise_has_a_check_here():
    with_code = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "book").rglob("*.ipynb")
        if student.BEGIN in p.read_text(encoding="utf-8")
    }
    assert with_code == set(CHECKS)


@pytest.mark.parametrize("path", sorted(CHECKS))
def test_the_solution_passes_the_stub_waits_and_a_mistake_is_explained(path, capsys):
    label, name, mistake = CHECKS[path]
    solution, check = _cells(path, label)
    _run(solution, check, name)
    assert f"{label}: correct" in capsys.readouterr().out
    _run(student.strip_code(solution), check, name)
    assert f"{label}: not attempted yet" in capsys.readouterr().out
    with pytest.raises(
        AssertionError, match=rf"^{label}( \(output \d+\))?: differs from the library by up to "
    ):
        _run(solution, check, name, replacement=mistake)
