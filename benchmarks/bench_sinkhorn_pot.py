"""Sinkhorn against POT at equal accuracy: otdiff.ot.solve's kernel mode, its log domain, POT.

Three problems outside the other benchmarks' (``--problems``: n points per cloud in d dimensions,
epsilon a fraction of the mean squared-Euclidean cost): a standard Gaussian source and a target
mixture of three anisotropic Gaussians, uniform weights.

* ``otdiff (auto)``: ``otdiff.ot.solve`` with its default ``lse_mode="auto"`` (the stabilised
  kernel iteration, then one checked log-domain iteration), float32, stopping once the column
  error is below ``--threshold``;
* ``otdiff (log)``: the same with ``lse_mode=True`` (ott-jax's log domain throughout);
* POT's solvers in float64 NumPy: ``sinkhorn`` (plain kernel Sinkhorn-Knopp) and
  ``sinkhorn_stabilized`` (absorption); ``sinkhorn_log``, much slower, with ``--pot-methods``.
  POT measures its stopping error differently (an L2 norm of the column error), so each of its
  solvers is rerun with a smaller ``stopThr`` (halved at least, from a quarter of
  ``--threshold``; divided by more when the error is further off) until its final L1 marginal
  error is no larger than that of ``otdiff (auto)`` (``--max-tightenings`` reruns at most), then
  bisects ``stopThr`` (``--refinements`` times at most) between the last value that fell short
  and the first that did not, since POT checks its error every 10 iterations and a big step
  may overshoot: the largest ``stopThr`` found accurate enough is timed.
  Every POT call is capped: at ``--pot-max-iterations`` iterations and at ``--pot-time-cap``
  seconds, enforced as an iteration cap from a timed 20-iteration probe (POT has no clock of its
  own). A solver that returns NaN, or that cannot reach the error within the caps, gets a row
  with ``working: false`` and a ``reason`` ("did not reach 8.7e-04 in 30 s"), with the best
  error, iterations and seconds (``capped_call_s``) of its last call.

Every final L1 marginal error :math:`\\|P\\mathbf 1 - a\\|_1 + \\|P^\\top\\mathbf 1 - b\\|_1` is
computed the same way, in float64, from the returned potentials (scalings for POT). Timings are
the median of ``--repeats`` interleaved rounds (one call of every solver per round, after one
untimed call each that also compiles JAX; each call ends with ``block_until_ready``), so that a
change of machine load affects every solver alike. The row ``ratio_fastest_pot`` is the time of the fastest working POT
solver at equal error over the time of ``otdiff (auto)`` (above 1: otdiff is faster). Results go
to ``benchmarks/results/sinkhorn_pot.json``.

Usage: ``python benchmarks/bench_sinkhorn_pot.py [--problems 800,3,0.01 1200,6,0.02 1500,10,0.05]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import _record
import jax
import numpy as np
from scipy.special import logsumexp

from otdiff import ot

RESULTS = Path(__file__).resolve().parent / "results" / "sinkhorn_pot.json"
POT_METHODS = ("sinkhorn", "sinkhorn_stabilized")  # POT's fastest; add sinkhorn_log by flag


def make_problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A standard Gaussian and a mixture of three anisotropic Gaussians, ``n`` points each."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    centres = 2.0 * rng.standard_normal((3, d))
    scales = rng.uniform(0.2, 1.0, (3, d))
    which = rng.integers(0, 3, n)
    y = centres[which] + scales[which] * rng.standard_normal((n, d))
    return x, y


def l1_error(cost, f, g, eps, a, b) -> float:
    """``|P 1 - a|_1 + |P^T 1 - b|_1`` in float64 for ``P = exp((f + g - C) / eps)``."""
    log_p = (f[:, None] + g[None, :] - cost) / eps
    rows = np.exp(logsumexp(log_p, axis=1))
    cols = np.exp(logsumexp(log_p, axis=0))
    return float(np.abs(rows - a).sum() + np.abs(cols - b).sum())


def otdiff_call(x, y, eps, threshold, lse_mode, max_iterations):
    """``ot.solve`` on the float32 clouds, as a function of no arguments."""
    x32, y32 = x.astype(np.float32), y.astype(np.float32)

    def call():
        return ot.solve(
            x32, y32, eps, threshold=threshold, lse_mode=lse_mode, max_iterations=max_iterations
        )

    return call


def otdiff_potentials(out) -> tuple[np.ndarray, np.ndarray, int]:
    return np.asarray(out.f, np.float64), np.asarray(out.g, np.float64), int(out.n_iterations)


def pot_call(pot, method, cost, eps, a, b, threshold, max_iterations):
    """POT's ``sinkhorn(method=...)`` in float64, as a function of no arguments."""

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pot.sinkhorn(
                a, b, cost, eps, method=method, stopThr=threshold,
                numItermax=max_iterations, log=True,
            )  # fmt: skip

    return call


def pot_iteration_cap(pot, method, cost, eps, a, b, time_cap, max_iterations) -> tuple:
    """The iteration cap that keeps one call under ``time_cap`` seconds: ``max_iterations`` or
    fewer, from the seconds per iteration of a 20-iteration call (``stopThr=0``: all 20 run)."""
    probe = pot_call(pot, method, cost, eps, a, b, 0.0, 20)
    probe()  # first call: NumPy's buffers and POT's imports warm
    start = time.perf_counter()
    probe()
    per_iteration = (time.perf_counter() - start) / 20
    return min(max_iterations, max(20, int(time_cap / per_iteration))), per_iteration


def pot_potentials(out, eps) -> tuple[np.ndarray, np.ndarray, int]:
    _, log = out
    if "log_u" in log:  # sinkhorn_log
        f, g = eps * np.asarray(log["log_u"]), eps * np.asarray(log["log_v"])
    elif "logu" in log:  # sinkhorn_stabilized: alpha / eps + log u
        f, g = eps * np.asarray(log["logu"]), eps * np.asarray(log["logv"])
    else:  # sinkhorn: the scalings
        with np.errstate(divide="ignore", invalid="ignore"):
            f, g = eps * np.log(np.asarray(log["u"])), eps * np.log(np.asarray(log["v"]))
    return f, g, int(log.get("niter", log.get("n_iter", -1)))


def interleaved(calls: dict, repeats: int) -> dict:
    """Median and fastest seconds of each ``call()`` in ``calls``, timed in interleaved rounds
    (one call of each per round, after one untimed call each), so load changes hit all alike."""
    for call in calls.values():
        jax.block_until_ready(call())
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems", nargs="+", default=["800,3,0.01", "1200,6,0.02", "1500,10,0.05"],
        help="n,d,fraction: n points per cloud in d dimensions, epsilon = fraction x mean cost",
    )  # fmt: skip
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=5000)
    parser.add_argument("--max-tightenings", type=int, default=8)
    parser.add_argument("--refinements", type=int, default=3,
                        help="bisections of stopThr once a POT solver is accurate enough")  # fmt: skip
    parser.add_argument("--pot-max-iterations", type=int, default=5000,
                        help="iteration cap of one POT call")  # fmt: skip
    parser.add_argument("--pot-time-cap", type=float, default=30.0,
                        help="seconds one POT call may take (an iteration cap from a probe)")  # fmt: skip
    parser.add_argument("--pot-methods", nargs="+", default=list(POT_METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    import ot as pot  # POT, the Python Optimal Transport library (`make bench` installs it)

    rows = []
    for k, spec in enumerate(args.problems):
        n, d, fraction = (t(v) for t, v in zip((int, int, float), spec.split(","), strict=True))
        x, y = make_problem(n, d, args.seed + k)
        cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        eps = float(fraction * cost.mean())
        a, b = np.full(n, 1 / n), np.full(n, 1 / n)
        common = dict(n=n, d=d, epsilon_fraction=fraction, epsilon=eps)
        common["cost_range_over_epsilon"] = float((cost.max() - cost.min()) / eps)
        calls, found = {}, {}  # solver -> call(); solver -> (row fields, potentials reader)
        for name, mode in (("otdiff (auto)", "auto"), ("otdiff (log)", True)):
            call = otdiff_call(x, y, eps, args.threshold, mode, args.max_iterations)
            f, g, its = otdiff_potentials(call())  # compiles
            calls[name] = call
            found[name] = dict(stop_threshold=args.threshold, iterations=its,
                               l1_error=l1_error(cost, f, g, eps, a, b))  # fmt: skip
            print(name, spec, found[name], flush=True)
        target = found["otdiff (auto)"]["l1_error"]  # every POT solver must reach it
        for method in args.pot_methods:
            name, threshold = f"pot {method}", args.threshold / 4  # POT's L2 error is below the L1
            cap, per_iteration = pot_iteration_cap(
                pot, method, cost, eps, a, b, args.pot_time_cap, args.pot_max_iterations
            )
            print(f"  {name}: {1e3 * per_iteration:.2f} ms per iteration, cap {cap} it", flush=True)
            last, failed = {}, None  # the last call; the loosest stopThr that fell short

            def attempt(threshold, name=name, cap=cap, problem=(method, cost, eps, a, b)):
                method, cost, eps, a, b = problem
                call = pot_call(pot, method, cost, eps, a, b, threshold, cap)
                start = time.perf_counter()
                f, g, its = pot_potentials(call(), eps)
                seconds = time.perf_counter() - start
                error = l1_error(cost, f, g, eps, a, b) if np.all(np.isfinite(f)) else np.nan
                print(f"  {name} stop {threshold:.1e}: {its} it, {seconds:.2f} s, "
                      f"L1 error {error:.2e}", flush=True)  # fmt: skip
                return call, its, error, seconds

            for _ in range(args.max_tightenings + 1):
                call, its, error, seconds = attempt(threshold)
                last = dict(stop_threshold=threshold, iterations=its, capped_call_s=seconds,
                            l1_error=float(error) if np.isfinite(error) else None)  # fmt: skip
                if np.isfinite(error) and error <= target:
                    # POT checks its error every 10 iterations: a big step down may overshoot,
                    # so bisect (in log scale) towards the stopThr that last fell short
                    for _ in range(args.refinements):
                        if failed is None or its - failed[1] <= 10:
                            break
                        middle = (threshold * failed[0]) ** 0.5
                        m_call, m_its, m_error, _ = attempt(middle)
                        if np.isfinite(m_error) and m_error <= target:
                            threshold, call, its, error = middle, m_call, m_its, m_error
                        else:
                            failed = (middle, m_its)
                    calls[name] = call
                    found[name] = dict(stop_threshold=threshold, iterations=its, l1_error=error)
                    break
                if not np.isfinite(error):
                    last["reason"] = "NaN (the kernel under- or overflowed)"
                    break
                if its >= cap - 1:  # the cap is spent (POT counts from 0): tightening cannot help
                    budget = (
                        f"{args.pot_time_cap:g} s" if cap < args.pot_max_iterations
                        else f"{cap} iterations"
                    )  # fmt: skip
                    last["reason"] = f"did not reach {target:.1e} in {budget}"
                    break
                failed = (threshold, its)
                threshold *= min(0.5, 0.7 * target / error)  # error ~ stopThr: aim just below
            else:
                last["reason"] = (
                    f"did not reach {target:.1e} in {args.max_tightenings + 1} stopThr values"
                )
            if name not in found:
                rows.append(common | dict(solver=name, working=False, iteration_cap=cap) | last)
                print(f"  {name}: {last['reason']}", flush=True)
        timings = interleaved(calls, args.repeats)
        for name, (median, best) in timings.items():
            rows.append(common | dict(solver=name, median_s=median, min_s=best, working=True)
                        | found[name])  # fmt: skip
        pot_times = [t[0] for name, t in timings.items() if name.startswith("pot")]
        auto = timings["otdiff (auto)"][0]
        rows.append(common | dict(
            solver="summary",
            ratio_fastest_pot=min(pot_times) / auto if pot_times else None,
            ratio_log_over_auto=timings["otdiff (log)"][0] / auto,
        ))  # fmt: skip

    for r in rows:
        if r["solver"] == "summary":
            pot_ratio = r["ratio_fastest_pot"]
            pot_text = "no POT solver reached it" if pot_ratio is None else f"{pot_ratio:.2f}x"
            print(f"  fastest POT / otdiff (auto): {pot_text}; "
                  f"otdiff (log) / otdiff (auto): {r['ratio_log_over_auto']:.2f}x")  # fmt: skip
        elif not r["working"]:
            print(f"{r['n']:5d} {r['d']:3d} {r['epsilon_fraction']:5.2f} {r['solver']:>24} "
                  f"{r['reason']} (last call: {r['iterations']} it, L1 error {r['l1_error']})")  # fmt: skip
        else:
            print(f"{r['n']:5d} {r['d']:3d} {r['epsilon_fraction']:5.2f} {r['solver']:>24} "
                  f"{1e3 * r['median_s']:9.1f} ms {r['iterations']:6d} it  "
                  f"L1 error {r['l1_error']:.2e} (stop {r['stop_threshold']:.1e})")  # fmt: skip
    _record.write(
        args.output, "sinkhorn_pot",
        {k: v for k, v in vars(args).items() if k != "output"}
        | {"openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        rows, pot=pot.__version__,
    )  # fmt: skip


if __name__ == "__main__":
    main()
