"""Sinkhorn from data-dependent starts (otdiff/ott-jax) against POT's two CPU solvers.

On the same point clouds (two anisotropic Gaussian clouds, ``otdiff.data.gaussian_clouds``, uniform
weights, squared Euclidean cost, epsilon a fraction of the mean cost) and with the same stopping
rule (the column marginal error below ``--threshold``, checked every 10 iterations), it times:

* ``otdiff/<start>``: ``otdiff.ot.solve_core`` (ott-jax's log-domain Sinkhorn, float32, jitted)
  from each start (``otdiff.ot.make_initializer``): ``zero``, ``gaussian``, ``subsample`` (100
  points) and ``gmm`` (3 components). Compilation is timed apart: ``compile_s`` is the first
  call's time minus the median of the later calls. The start's own cost is part of the run time.
* ``pot_log``: POT's ``ot.sinkhorn(..., method="sinkhorn_log")`` (float64, NumPy).
* ``pot``: POT's plain ``ot.sinkhorn`` (kernel scaling, float64), which underflows at small
  epsilon: a run counts as working only if its coupling is finite and its marginal error is below
  ten times the threshold.

POT measures the column error in the L2 norm, ott-jax in the L1 norm. Since
|e|_1 <= sqrt(m) |e|_2, POT gets ``stopThr = threshold / sqrt(m)``, which
guarantees the L1 rule but may run a few more iterations than needed; so every row also reports
the iterations and the time per iteration, which do not depend on the rule. Results go to
``benchmarks/results/sinkhorn_init.json``.

Usage: ``python benchmarks/bench_sinkhorn_init.py`` (modest sizes, a few minutes on two CPU
cores) or ``python benchmarks/bench_sinkhorn_init.py --full`` (n = 1,000 to
10,000, d = 2 and 32; meant for a bigger machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
import jax.numpy as jnp
import numpy as np

from otdiff import ot
from otdiff.data import gaussian_clouds

RESULTS = Path(__file__).resolve().parent / "results" / "sinkhorn_init.json"
INNER = 10  # iterations between two error checks, in every solver
STARTS = {
    "zero": {},
    "gaussian": {},
    "subsample": {"subsample_n": 100},
    "gmm": {"n_components": 3},
}


def bench_otdiff(x, y, eps, threshold, max_iterations, repeats, start, options):
    n, m = len(x), len(y)
    args = (
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
        jnp.full(n, 1 / n, jnp.float32),
        jnp.full(m, 1 / m, jnp.float32),
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(threshold, jnp.float32),
    )
    initializer = ot.make_initializer(start, **options)

    def run():
        return ot.solve_core(
            *args,
            initializer=initializer,
            key=jax.random.key(0),
            max_iterations=max_iterations,
            inner_iterations=INNER,
        )

    first, median, _, out = _record.timed(run, repeats)
    return dict(
        median_s=median,
        compile_s=max(first - median, 0.0),
        iterations=int(out.n_iterations),
        reg_ot_cost=float(out.reg_ot_cost),
        marginal_error=float(out.marginal_error),
        works=bool(out.converged),
    )


def bench_pot(pot, x, y, eps, threshold, max_iterations, repeats, method):
    n, m = len(x), len(y)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)

    def run():
        with np.errstate(all="ignore"):
            return pot.sinkhorn(
                a,
                b,
                C,
                eps,
                method=method,
                stopThr=threshold / np.sqrt(m),
                numItermax=max_iterations,
                log=True,
            )

    _, median, _, (P, log) = _record.timed(run, repeats, warmup=False)
    with np.errstate(all="ignore"):
        error = float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())
        cost = float(
            np.sum(P * C) + eps * np.sum(P * np.log(np.maximum(P, 1e-300) / np.outer(a, b)))
        )
    works = bool(np.all(np.isfinite(P)) and error < 10 * threshold)
    return dict(
        median_s=median,
        compile_s=0.0,
        iterations=int(log.get("niter", -1)),
        reg_ot_cost=cost,
        marginal_error=error,
        works=works,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--eps-rel", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pot-repeats", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="n = 1000 2000 5000 10000")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.full:
        args.sizes = [1000, 2000, 5000, 10000]

    try:
        import ot as pot  # POT, the Python Optimal Transport library (not otdiff.ot)
    except ImportError:
        pot = None
        print("POT is not installed (`pip install pot`): skipping it.")

    rows = []
    for n in args.sizes:
        for d in args.dims:
            x, y = (np.asarray(v, np.float64) for v in gaussian_clouds(jax.random.key(0), n, d))
            mean_cost = float(np.mean(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)))
            for eps_rel in args.eps_rel:
                eps = eps_rel * mean_cost
                common = dict(n=n, d=d, eps_rel=eps_rel, epsilon=eps, threshold=args.threshold)
                runs = {}
                for start, options in STARTS.items():
                    runs[f"otdiff/{start}"] = bench_otdiff(
                        x, y, eps, args.threshold, args.max_iterations, args.repeats, start, options
                    )
                if pot is not None:
                    for name, method in (("pot_log", "sinkhorn_log"), ("pot", "sinkhorn")):
                        runs[name] = bench_pot(
                            pot,
                            x,
                            y,
                            eps,
                            args.threshold,
                            args.max_iterations,
                            args.pot_repeats,
                            method,
                        )
                ref = runs.get("pot_log", {}).get("median_s", float("nan"))
                for solver, r in runs.items():
                    per_iteration = 1e3 * r["median_s"] / max(r["iterations"], 1)
                    extra = {
                        "ms_per_iteration": per_iteration,
                        "speedup_vs_pot_log": ref / r["median_s"],
                    }
                    rows.append(common | {"solver": solver} | r | extra)
                    print(
                        f"n={n:6d} d={d:3d} eps_rel={eps_rel:<6g} {solver:>18} "
                        f"{1e3 * r['median_s']:10.1f} ms  compile {r['compile_s']:5.2f} s  "
                        f"{r['iterations']:5d} it  works={r['works']}  "
                        f"x{ref / r['median_s']:.1f} vs pot_log",
                        flush=True,
                    )

    _record.write(
        args.output,
        "sinkhorn_init",
        vars(args),
        rows,
        pot=None if pot is None else pot.__version__,
    )


if __name__ == "__main__":
    main()
