"""Sampling throughput of the reverse-SDE sampler: one jitted ``lax.scan`` against a Python loop.

A fixed network (``ScoreMLP`` on 64-dimensional points, the size of the 8x8 digits, with random
weights: the speed does not depend on training) and a fixed number of Euler–Maruyama steps. Two
ways to run the same steps:

* ``scan``: ``otdiff.diffusion.euler_maruyama`` under ``jax.jit``: one compiled program;
* ``python loop``: one jitted step (the public kernel ``euler_maruyama_step``) called ``n_steps``
  times from Python, the way a sampler written as a ``for`` loop runs.

Each row reports samples per second and the achieved floating-point rate (the network's
multiply-adds counted from its layer shapes, two flops each) as a fraction of the machine's
measured matrix-multiply rate (a jitted float32 ``1024 x 1024`` product, median of repeats).
Each timing is the median of ``--repeats`` runs after one warm-up run that compiles.

Usage::

    python benchmarks/bench_diffusion.py          # writes benchmarks/results/diffusion_sampling.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from _record import median_time, write

from otdiff import diffusion
from otdiff.diffusion import ScoreMLP

RESULTS = Path(__file__).resolve().parent / "results" / "diffusion_sampling.json"


def matmul_rate(size: int = 1024, repeats: int = 20) -> float:
    """The measured float32 matrix-multiply rate in flop/s."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    b = jax.random.normal(jax.random.key(1), (size, size))
    seconds = median_time(jax.jit(jnp.dot), a, b, repeats=repeats)
    return 2 * size**3 / seconds


def network_flops(model) -> int:
    """Flops of one evaluation on one point: 2 per multiply-add of every linear layer."""
    linears = [
        leaf
        for leaf in jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))
        if isinstance(leaf, eqx.nn.Linear)
    ]
    return sum(2 * layer.in_features * layer.out_features for layer in linears)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    process = diffusion.LinearVP()
    model = ScoreMLP(64, hidden=(args.hidden,) * 3, key=jax.random.key(0))
    score = diffusion.score_from_eps(model, process)
    flops_per_eval = network_flops(model)
    peak = matmul_rate()
    print(f"matrix-multiply rate: {peak / 1e9:.1f} GFLOP/s; network: {flops_per_eval} flops/point")

    @jax.jit
    def scan_sampler(key, x):
        return diffusion.euler_maruyama(key, score, process, x, args.steps).x

    times = diffusion.time_grid(args.steps)

    @jax.jit
    def one_step(key, x, t, t_next):
        return diffusion.euler_maruyama_step(key, x, t, t_next, score=score, process=process)

    def loop_sampler(key, x):
        keys = jax.random.split(key, args.steps)
        for i in range(args.steps):
            x = one_step(keys[i], x, times[i], times[i + 1])
        return x

    rows = []
    for batch in args.batch:
        x = jax.random.normal(jax.random.key(1), (batch, 64))
        total_flops = flops_per_eval * batch * args.steps
        for name, fn in (("scan", scan_sampler), ("python loop", loop_sampler)):
            seconds = median_time(fn, jax.random.key(2), x, repeats=args.repeats)
            rows.append(
                {
                    "sampler": name,
                    "batch": batch,
                    "n_steps": args.steps,
                    "seconds": seconds,
                    "samples_per_second": batch / seconds,
                    "gflops_per_second": total_flops / seconds / 1e9,
                    "fraction_of_matmul_rate": total_flops / seconds / peak,
                }
            )
            r = rows[-1]
            print(
                f"{name:>12} batch {batch:5d}: {r['samples_per_second']:9.0f} samples/s, "
                f"{r['gflops_per_second']:6.1f} GFLOP/s = {100 * r['fraction_of_matmul_rate']:.0f}% of matmul"
            )
    settings = {
        "network": f"ScoreMLP(64, hidden={(args.hidden,) * 3})",
        "flops_per_eval": flops_per_eval,
        "n_steps": args.steps,
        "matmul_gflops_per_second": peak / 1e9,
        "repeats": args.repeats,
    }
    write(args.out, "diffusion sampling throughput", settings, rows)


if __name__ == "__main__":
    main()
