"""One training step of a cost-parameterized Monge map estimator, against n and d.

A step is what ``otdiff.ot.monge.fit_cost_step`` does: the cost matrix, a Sinkhorn solve at
``0.03 x`` the mean cost (ott-jax, float32, tolerance 1e-3), the forward and reverse entropic
maps of ``k = 30`` labelled pairs through grad h*, the loss, and its gradient with respect to the
cost's parameters (implicit differentiation through Sinkhorn for the Mahalanobis cost; for the
neural cost 20 unrolled Sinkhorn iterations from the converged potentials, and the implicit
adjoint of optimistix through the BFGS argmin of grad h*), and an Adam update. Costs:

* ``mahalanobis``: ``otdiff.ot.costs.Mahalanobis`` (grad h* a d x d solve);
* ``neural``: ``otdiff.ot.costs.NeuralCost``, an ICNN with hidden widths (32, 32).

Problems: ``x ~ N(0, I_d)``, ``y = T(x')`` for an independent ``x'`` with the whitened monotone
map of ``otdiff.data.mahalanobis_map`` applied in the first two coordinates (the rest shifted by
one). Each row: the median wall time of a step (compilation apart), the compile time of the
first call, and the Sinkhorn iterations. Results go to ``benchmarks/results/monge.json``.

Usage: ``python benchmarks/bench_monge.py`` (n = 100, 200 and d = 2, 8: a few minutes on two
CPU cores) or ``--full`` (n up to 2000, d up to 32; meant for a GPU).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import _record
import jax
import jax.numpy as jnp

from otdiff.data import mahalanobis_map, mahalanobis_matrix
from otdiff.ot import costs as ti_costs
from otdiff.ot import monge

RESULTS = Path(__file__).resolve().parent / "results" / "monge.json"
PAIRS = 30


def problem(key, n, d):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d))
    other = jax.random.normal(ky, (n, d))
    other = other.at[:PAIRS].set(x[:PAIRS])
    head = mahalanobis_map(other[:, :2], mahalanobis_matrix())
    y = jnp.concatenate([head, other[:, 2:] + 1.0], axis=1)
    return x, y


def make_cost(kind, d):
    if kind == "mahalanobis":
        return ti_costs.Mahalanobis.euclidean(d)
    return ti_costs.NeuralCost.create(jax.random.key(1), d, (32, 32))


def main(args):
    rows = []
    for kind in args.costs:
        for d in args.dims:
            for n in args.sizes:
                x, y = problem(jax.random.key(0), n, d)
                cost = make_cost(kind, d)
                state = monge.fit_cost_init(cost, 3e-2)
                hyper = [jnp.asarray(v, jnp.float32) for v in (3e-2, 0.03, 1e-4, 1e-3)]
                how = "implicit" if kind == "mahalanobis" else "unrolled"
                step = jax.jit(functools.partial(monge.fit_cost_step, differentiation=how))
                start = time.perf_counter()
                _, info = jax.block_until_ready(step(state, x, y, x[:PAIRS], y[:PAIRS], *hyper))
                compile_s = time.perf_counter() - start
                seconds = _record.median_time(
                    step, state, x, y, x[:PAIRS], y[:PAIRS], *hyper, repeats=args.repeats
                )
                row = {
                    "cost": kind,
                    "differentiation": how,
                    "n": n,
                    "d": d,
                    "step_s": round(seconds, 4),
                    "first_call_s": round(compile_s, 2),
                    "sinkhorn_iterations": int(info["n_iterations"]),
                    "finite": bool(info["finite"]),
                }
                print(row, flush=True)
                rows.append(row)
    _record.write(RESULTS, "monge", vars(args), rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--costs", nargs="+", default=["mahalanobis", "neural"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    if args.full:
        args.sizes, args.dims = [500, 1000, 2000], [2, 8, 32]
    main(args)
