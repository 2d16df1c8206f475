"""Entropic OT: otdiff.ot.solve (ott-jax, jitted) against NumPy and, if installed, POT.

Every solver runs log-domain Sinkhorn from zero potentials on the same problem (a Gaussian blob
and a noisy ring, uniform weights, squared Euclidean cost, absolute epsilon) with the same stopping
rule: the L1 error of the column marginal, checked every 10 iterations, below ``--threshold``.

* ``otdiff``: ``otdiff.ot.solve`` in float32 on JAX's default device, compiled by a warm-up call;
  each timed call ends with ``block_until_ready``.
* ``numpy``: a float64 log-domain Sinkhorn with ``scipy.special.logsumexp`` (the reference the
  tests use), on the CPU.
* ``pot``: ``ot.sinkhorn(..., method="sinkhorn_log")`` from POT, float64, if ``import ot`` works.
  POT also checks every 10 iterations, but measures the column error in the L2 norm (smaller
  than the L1 norm), so it may stop a little earlier.

The median wall-clock time over ``--repeats`` runs is reported, with the iteration count, the
regularised cost ``<f, a> + <g, b> + eps (1 - sum P)`` (ott-jax's ``reg_ot_cost``) and its
deviation from the NumPy float64 value. Results go to ``benchmarks/results/sinkhorn.json``.

Usage: ``python benchmarks/bench_sinkhorn.py [--sizes 200 500] [--epsilons 0.1 0.01]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import numpy as np
from scipy.special import logsumexp

from otdiff import ot

RESULTS = Path(__file__).resolve().parent / "results" / "sinkhorn.json"
INNER = 10  # iterations between two error checks, in every solver


def make_clouds(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian blob around (-0.5, 0) and a noisy ring of radius 0.45 around (0.5, 0)."""
    rng = np.random.default_rng(seed)
    x = np.array([-0.5, 0.0]) + 0.25 * rng.standard_normal((n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    ring = 0.45 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    y = np.array([0.5, 0.0]) + ring + 0.03 * rng.standard_normal((n, 2))
    return x, y


def numpy_sinkhorn(x, y, eps, threshold, max_iterations):
    """Float64 log-domain Sinkhorn in ott-jax's convention; returns (f, g, iterations, cost)."""
    n, m = len(x), len(y)
    log_a, log_b = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    f, g = np.zeros(n), np.zeros(m)
    iterations = 0
    while iterations < max_iterations:
        for _ in range(INNER):
            g = eps * log_b - eps * logsumexp((f[:, None] - C) / eps, axis=0)
            f = eps * log_a - eps * logsumexp((g[None, :] - C) / eps, axis=1)
        iterations += INNER
        column = np.exp(logsumexp((f[:, None] + g[None, :] - C) / eps, axis=0))
        if np.abs(column - np.exp(log_b)).sum() < threshold:
            break
    total = np.exp(logsumexp((f[:, None] + g[None, :] - C) / eps))
    cost = np.mean(f - eps * log_a) + np.mean(g - eps * log_b) + eps * (1 - total)
    return f, g, iterations, float(cost)


def bench_otdiff(x, y, eps, threshold, max_iterations, repeats):
    x32, y32 = x.astype(np.float32), y.astype(np.float32)

    def run():
        return ot.solve(x32, y32, eps, threshold=threshold, max_iterations=max_iterations)

    # the first call compiles (epsilon and threshold are dynamic: once per shape)
    _, median, best, out = _record.timed(run, repeats)
    return median, best, int(out.n_iterations), float(out.reg_ot_cost)


def bench_numpy(x, y, eps, threshold, max_iterations, repeats):
    _, median, best, (_, _, iterations, cost) = _record.timed(
        lambda: numpy_sinkhorn(x, y, eps, threshold, max_iterations), repeats, warmup=False
    )
    return median, best, iterations, cost


def bench_pot(pot, x, y, eps, threshold, max_iterations, repeats):
    n, m = len(x), len(y)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)

    def run():
        return pot.sinkhorn(
            a,
            b,
            C,
            eps,
            method="sinkhorn_log",
            stopThr=threshold,
            numItermax=max_iterations,
            log=True,
        )

    _, median, best, (P, log) = _record.timed(run, repeats)
    # POT's plan is diag(u) K diag(v) with K = exp(-C / eps): in ott-jax's convention
    # f = eps log u and g = eps log v, and the dual value is computed as for the others.
    f, g = eps * np.asarray(log["log_u"]), eps * np.asarray(log["log_v"])
    cost = np.sum(a * (f - eps * np.log(a))) + np.sum(b * (g - eps * np.log(b)))
    cost += eps * (1 - P.sum())
    return median, best, int(log.get("niter", -1)), float(cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--numpy-repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    try:
        import ot as pot  # POT, the Python Optimal Transport library
    except ImportError:
        pot = None
        print("POT is not installed (`pip install pot`): skipping it.")

    rows = []
    for n in args.sizes:
        x, y = make_clouds(n)
        for eps in args.epsilons:
            common = dict(n=n, epsilon=eps, threshold=args.threshold)
            ref = bench_numpy(x, y, eps, args.threshold, args.max_iterations, args.numpy_repeats)
            runs = {
                "otdiff": bench_otdiff(
                    x, y, eps, args.threshold, args.max_iterations, args.repeats
                ),
                "numpy": ref,
            }
            if pot is not None:
                runs["pot"] = bench_pot(
                    pot, x, y, eps, args.threshold, args.max_iterations, args.numpy_repeats
                )
            for solver, (median, best, iterations, cost) in runs.items():
                rows.append(
                    common
                    | dict(
                        solver=solver,
                        median_s=median,
                        min_s=best,
                        iterations=iterations,
                        reg_ot_cost=cost,
                        cost_minus_numpy=cost - ref[3],
                        speedup_vs_numpy=ref[0] / median,
                    )
                )

    header = (
        f"{'n':>6} {'epsilon':>8} {'solver':>7} {'median [ms]':>12} {'iterations':>10} "
        f"{'reg_ot_cost':>12} {'- numpy':>9} {'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['n']:6d} {r['epsilon']:8.3g} {r['solver']:>7} {1e3 * r['median_s']:12.2f} "
            f"{r['iterations']:10d} {r['reg_ot_cost']:12.6f} {r['cost_minus_numpy']:9.1e} "
            f"{r['speedup_vs_numpy']:8.1f}x"
        )

    _record.write(
        args.output,
        "sinkhorn",
        {k: v for k, v in vars(args).items() if k != "output"},
        rows,
        pot=None if pot is None else pot.__version__,
    )


if __name__ == "__main__":
    main()
