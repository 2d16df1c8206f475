"""ProgOT (otdiff) against one-shot Sinkhorn (otdiff/ott-jax) and POT, on the same problems.

Problems (uniform weights, squared Euclidean cost, ``n`` points per cloud in dimension ``d``):

* ``clusters``: x ~ N(0, I), y ~ N(0, I) + 3 s (1, ..., 1) with a random sign s per point;
* ``known_map``: ``otdiff.data.known_map_problem``: x ~ N(0, I), y = T0(x') for an independent x',
  where T0 = grad phi is known in closed form, so the map error is exact.

The target regularisation is ``eps_rel`` times ott-jax's default epsilon (0.05 std of the cost).
Every solver stops when the column marginal error ||P^T 1 - b||_1 is below ``--threshold``,
checked every 10 iterations (POT measures the L2 norm and gets ``threshold / sqrt(m)``, which
implies the L1 rule). Solvers:

* ``otdiff/sinkhorn``: ``otdiff.ot.solve_core`` at the target epsilon (float32, jitted);
* ``otdiff/progot``: ``otdiff.ot.progot_core``, K = 8 constant-speed steps, epsilon on the
  geometric path from the default to the target (the last step at the target), warm starts;
* ``pot``: POT's ``ot.sinkhorn`` (kernel scaling, float64) at the target epsilon; it underflows
  at small epsilon, and counts as working only if its plan is finite with marginal error below
  ten times the threshold;
* ``pot_log``: POT's ``ot.sinkhorn(..., method="sinkhorn_log")`` (float64); skipped, and said so,
  when a 20-iteration probe predicts more than ``--pot-budget`` seconds.

Each row: median wall time (compilation apart), iterations (summed over ProgOT's steps),
marginal error, the plan's cost relative to the exact OT cost (``scipy`` assignment), and the
map error of the plan's barycentric projection at the training points,
``mean ||sum_j P_ij y_j / a_i - T0(x_i)||^2 / tr Cov(T0(x))`` (``known_map`` only; for ProgOT the
trained points x^(K)). Results go to ``benchmarks/results/progot.json``.

Usage: ``python benchmarks/bench_progot.py`` (n = 500, d = 8, two epsilons: a few minutes on two
CPU cores) or ``--full`` (n = 1000, 2000, 4000 and d = 8, 32; meant for a GPU or a bigger machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
import jax.numpy as jnp
import numpy as np

from otdiff import metrics, ot
from otdiff.data import known_map, known_map_problem

RESULTS = Path(__file__).resolve().parent / "results" / "progot.json"
INNER = 10
STEPS = 8


def problem(name: str, n: int, d: int, seed: int = 0):
    if name == "known_map":
        x, y, _, _ = known_map_problem(jax.random.key(seed), n, d, n_test=2)
        return x, y
    kx, ky, ks = jax.random.split(jax.random.key(seed), 3)
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (n, 1)), 1.0, -1.0)
    return jax.random.normal(kx, (n, d)), jax.random.normal(ky, (n, d)) + 3.0 * sign


def map_error(name, x, y, plan=None, moved=None):
    """The relative MSE of the plan's barycentric projection (or of ``moved``) against T0(x)."""
    if name != "known_map":
        return None
    if moved is None:
        plan = np.asarray(plan, np.float64)
        moved = (plan @ np.asarray(y, np.float64)) / plan.sum(1, keepdims=True)
    truth = known_map(jnp.asarray(x, jnp.float32))
    return float(metrics.map_error(jnp.asarray(moved, jnp.float32), truth))


def row(solver, median, first, iterations, error, cost, exact, mapped, works, **extra):
    return dict(
        solver=solver,
        median_s=median,
        compile_s=max(first - median, 0.0),
        iterations=int(iterations),
        marginal_error=float(error),
        cost_vs_exact=float(cost / exact - 1.0),
        map_error=mapped,
        works=bool(works),
        **extra,
    )


def bench_problem(pot, name, n, d, eps_rel, args):
    x, y = problem(name, n, d)
    a = jnp.full(n, 1.0 / n)
    exact = ot.exact_ot_cost(x, y).cost
    eps0 = float(ot.default_epsilon(x, y))
    eps = eps_rel * eps0
    tau = jnp.asarray(args.threshold)
    rows = []

    def sinkhorn():
        return ot.solve_core(
            x,
            y,
            a,
            a,
            jnp.asarray(eps),
            tau,
            max_iterations=args.max_iterations,
            inner_iterations=INNER,
            return_coupling=name == "known_map",
        )

    first, median, _, out = _record.timed(sinkhorn, args.repeats)
    rows.append(
        row(
            "otdiff/sinkhorn",
            median,
            first,
            out.n_iterations,
            out.marginal_error,
            float(out.transport_cost),
            exact,
            map_error(name, x, y, out.coupling),
            out.converged,
        )
    )
    direct_iterations = int(out.n_iterations)

    alphas = ot.alpha_schedule("lin", STEPS)
    epsilons = ot.epsilon_schedule(alphas, eps0, eps, kind="geometric")

    def progot():
        return ot.progot_core(
            x,
            y,
            a,
            a,
            alphas,
            epsilons,
            jnp.full(STEPS, args.threshold),
            max_iterations=args.max_iterations,
            inner_iterations=INNER,
        )

    first, median, _, out = _record.timed(progot, args.repeats)
    rows.append(
        row(
            "otdiff/progot",
            median,
            first,
            out.total_iterations,
            out.marginal_error,
            float(out.transport_cost),
            exact,
            map_error(name, x, y, moved=out.xs[-1]),
            bool(out.converged.all()),
            iterations_per_step=[int(i) for i in out.n_iterations],
            iterations_vs_sinkhorn=float(out.total_iterations) / direct_iterations,
        )
    )

    if pot is not None:
        xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
        an = np.full(n, 1.0 / n)
        C = ((xn[:, None, :] - yn[None, :, :]) ** 2).sum(-1)
        for method in ("sinkhorn", "sinkhorn_log"):
            solver = "pot" if method == "sinkhorn" else "pot_log"

            def run(max_iter, method=method):
                with np.errstate(all="ignore"):
                    return pot.sinkhorn(
                        an,
                        an,
                        C,
                        eps,
                        method=method,
                        stopThr=args.threshold / np.sqrt(n),
                        numItermax=max_iter,
                        log=True,
                        warn=False,
                    )

            if method == "sinkhorn_log":
                probe = _record.timed(lambda: run(20), 1, warmup=False).median_s
                predicted = probe / 20 * direct_iterations
                if predicted > args.pot_budget:
                    rows.append(
                        dict(
                            solver=solver,
                            skipped=f"predicted {predicted:.0f} s for {direct_iterations} "
                            f"iterations (budget {args.pot_budget:.0f} s)",
                        )
                    )
                    continue
            _, median, _, (P, log) = _record.timed(
                lambda: run(args.max_iterations), args.pot_repeats, warmup=False
            )
            with np.errstate(all="ignore"):
                error = float(np.abs(P.sum(1) - an).sum() + np.abs(P.sum(0) - an).sum())
                cost = float(np.sum(P * C))
                finite = bool(np.all(np.isfinite(P)) and np.all(P.sum(1) > 0))
                mapped = map_error(name, xn, yn, P) if finite else None
            rows.append(
                row(
                    solver,
                    median,
                    median,
                    log.get("niter", -1),
                    error,
                    cost,
                    exact,
                    mapped,
                    finite and error < 10 * args.threshold,
                )
            )
    for r in rows:
        r.update(problem=name, n=n, d=d, eps_rel=eps_rel, epsilon=eps, exact_cost=exact)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500])
    parser.add_argument("--dims", type=int, nargs="+", default=[8])
    parser.add_argument("--problems", nargs="+", default=["clusters", "known_map"])
    parser.add_argument("--eps-rel", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pot-repeats", type=int, default=1)
    parser.add_argument("--pot-budget", type=float, default=60.0, help="seconds per POT log run")
    parser.add_argument("--full", action="store_true", help="n = 1000 2000 4000, d = 8 32")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.full:
        args.sizes, args.dims, args.pot_budget = [1000, 2000, 4000], [8, 32], 600.0

    try:
        import ot as pot  # POT, the Python Optimal Transport library (not otdiff.ot)
    except ImportError:
        pot = None
        print("POT is not installed (`pip install pot`): skipping it.")

    results = []
    header = (
        f"{'problem':>9} {'n':>5} {'d':>3} {'eps/def':>7} {'solver':>16} {'s':>8} "
        f"{'compile':>7} {'iters':>6} {'marg.err':>8} {'cost-1':>9} {'map err':>8} {'ok':>3}"
    )
    print(header)
    for name in args.problems:
        for n in args.sizes:
            for d in args.dims:
                for eps_rel in args.eps_rel:
                    for r in bench_problem(pot, name, n, d, eps_rel, args):
                        results.append(r)
                        if "skipped" in r:
                            print(
                                f"{name:>9} {n:5d} {d:3d} {eps_rel:7g} {r['solver']:>16} "
                                f"skipped: {r['skipped']}"
                            )
                            continue
                        mapped = "-" if r["map_error"] is None else f"{r['map_error']:.4f}"
                        print(
                            f"{name:>9} {n:5d} {d:3d} {eps_rel:7g} {r['solver']:>16} "
                            f"{r['median_s']:8.2f} {r['compile_s']:7.2f} {r['iterations']:6d} "
                            f"{r['marginal_error']:8.1e} {r['cost_vs_exact']:+9.1e} "
                            f"{mapped:>8} {'yes' if r['works'] else 'no':>3}",
                            flush=True,
                        )
    _record.write(
        args.output,
        "progot",
        vars(args) | {"steps": STEPS, "inner_iterations": INNER},
        results,
        ott=_version("ott-jax"),
        pot=_version("pot"),
    )


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
