"""RDSB on the sphere: the geodesic random walk's throughput and the cost of one IPF iteration.

Rows of ``benchmarks/results/rdsb.json``:

* ``walk``: the geodesic random walk (``otdiff.manifolds.geodesic_random_walk``) of ``n`` points
  for ``K`` steps, with zero drift and with a drift network (the chapter's ``DriftNet``, hidden
  layers ``--hidden``), as milliseconds per call and million point-steps per second;
* ``half_step``: the pieces of one IPF half-step for ``N`` cached particles and ``K`` steps: the
  walk that fills the cache (with a drift network), ``reversal_targets`` (the other direction's
  drift and exact divergence on the whole cache), and ``--train-steps`` (100) Adam steps of the
  implicit score-matching loss (exact divergence and Hutchinson) and of the heat-kernel denoising
  loss with ``otdiff.train.fit`` (one compiled chunk), with batch ``--batch``; an IPF iteration is
  two half-steps, each ``train_steps / 100`` times that training plus one walk and one
  ``reversal_targets``. The walk that fills the cache is also what
  generating ``N`` samples costs.

Each timing is the median of ``--repeats`` calls after a compiling warm-up, with
``block_until_ready``. Usage: ``python benchmarks/bench_rdsb.py [--particles 1000 4000]
[--steps 20 50] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
import jax.numpy as jnp

from otdiff import manifolds
from otdiff.manifolds import bridge as B

RESULTS = Path(__file__).resolve().parent / "results" / "rdsb.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walk-points", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--walk-steps", type=int, default=100)
    parser.add_argument("--particles", type=int, nargs="+", default=[1_000, 2_000, 8_000])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    s2 = manifolds.Sphere(2)
    mix = manifolds.vmf_mixture(jnp.eye(3), 25.0)
    net = manifolds.make_drift_network(jax.random.key(0), s2, tuple(args.hidden), 32)
    timed = B._Timed(net, jnp.asarray(1.0))
    results = []

    walk = jax.jit(
        lambda k, x, drift: (
            manifolds.geodesic_random_walk(k, s2, x, 1.0, args.walk_steps, drift, keep_path=False).x
        ),
        static_argnums=2,
    )
    walk_net = jax.jit(
        lambda k, x, d: (
            manifolds.geodesic_random_walk(k, s2, x, 1.0, args.walk_steps, d, keep_path=False).x
        )
    )
    for n in args.walk_points:
        x = s2.random_uniform(jax.random.key(1), n)
        t = _record.median_seconds(
            {
                "zero": (walk, (jax.random.key(2), x, None)),
                "net": (walk_net, (jax.random.key(2), x, timed)),
            },
            args.repeats,
        )
        row = {"kind": "walk", "points": n, "steps": args.walk_steps}
        for name, sec in t.items():
            row[f"{name}_drift_ms"] = round(1e3 * sec, 3)
            row[f"{name}_drift_mpoint_steps_per_s"] = round(n * args.walk_steps / sec / 1e6, 2)
        results.append(row)
        print(row, flush=True)

    for k_steps in args.steps:
        for n in args.particles:
            cfg = manifolds.BridgeConfig(
                horizon=0.2, n_steps=k_steps, n_particles=n, train_steps=args.train_steps,
                batch_size=args.batch, hidden=tuple(args.hidden),
            )  # fmt: skip
            hutch = manifolds.BridgeConfig(**{**cfg.as_dict(), "divergence": "hutchinson"})
            x0 = mix.sample(jax.random.key(3), n)
            fill = jax.jit(
                lambda k, x, d, k_steps=k_steps: (
                    manifolds.geodesic_random_walk(k, s2, x, 0.2, k_steps, d).path
                )
            )
            path = fill(jax.random.key(4), x0, timed)
            targets = lambda p: B.reversal_targets(s2, p, timed, jnp.asarray(0.2))
            pts, other, div = targets(path)
            n_terms = manifolds.n_terms_for(cfg.gamma)
            t = _record.median_seconds(
                {
                    "walk_fill": (fill, (jax.random.key(4), x0, timed)),
                    "reversal_targets": (targets, (path,)),
                    "ism_exact_100": (
                        B._train_ism,
                        (jax.random.key(5), net, s2, pts, other, div, cfg),
                    ),
                    "ism_hutchinson_100": (
                        B._train_ism,
                        (jax.random.key(5), net, s2, pts, other, div, hutch),
                    ),
                    "heat_dsm_100": (B._train_heat, (jax.random.key(6), net, x0, cfg, n_terms)),
                },
                args.repeats,
            )
            row = {"kind": "half_step", "particles": n, "steps": k_steps, "batch": args.batch}
            row.update({f"{name}_ms": round(1e3 * sec, 2) for name, sec in t.items()})
            results.append(row)
            print(row, flush=True)

    _record.write(RESULTS, "rdsb", vars(args), results)


if __name__ == "__main__":
    main()
