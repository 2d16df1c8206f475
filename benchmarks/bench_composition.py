"""Projective composition: the cost of a composed score against the number of composed terms.

The composed score :math:`s_b + \\sum_i w_i (s_i - s_b)` evaluates every term and the background,
so one reverse-diffusion run costs about ``k + 1`` single-score runs. Rows per number of slots
``d`` (``--slots``), composing all ``d`` one-object scores against the empty background:

* ``exact_ms``: one Euler-Maruyama run (``--n-steps`` steps, ``--n-samples`` points) with the exact
  noised scores of :func:`otdiff.data.slots` (each a Gaussian mixture; the background has one
  component, a one-object law two);
* ``single_exact_ms``: the same run with the exact score of the target law alone (its ``2**d``
  components), the reference a composition replaces;
* ``local_ms`` / ``mlp_ms``: the same run with a learned conditional network
  (:class:`otdiff.diffusion.conditional.LocalSlotNet` with hidden widths (64, 64),
  :class:`~otdiff.diffusion.conditional.ConditionalMLP` with (256, 256, 256); random weights, the
  cost does not depend on them), ``d + 1`` network calls per step.

Each timing is the median of ``--repeats`` calls after a compiling warm-up (interleaved rounds,
``block_until_ready``). Results go to ``benchmarks/results/composition.json``.

Usage: ``python benchmarks/bench_composition.py [--slots 2 4 8] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff.data import slots
from otdiff.diffusion import LinearVP, euler_maruyama
from otdiff.diffusion.composition import compose
from otdiff.diffusion.conditional import ConditionalMLP, ConditionalScore, LocalSlotNet

RESULTS = Path(__file__).resolve().parent / "results" / "composition.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    process = LinearVP()
    rows = []
    for d in args.slots:
        fam = slots(d)
        key = jax.random.key(0)
        x0 = process.prior_sample(key, (args.n_samples, d))

        def run(score, x0, key=key):
            return euler_maruyama(key, score, process, x0, args.n_steps).x

        exact = compose([fam.score(process, (i,)) for i in range(d)],
                        background=fam.score(process, "background"))  # fmt: skip
        local = LocalSlotNet(d, hidden=(64, 64), embed_dim=16, key=key)
        mlp = ConditionalMLP(d, hidden=(256, 256, 256), embed_dim=32, key=key)

        def learned(model, d=d):
            terms = [ConditionalScore(model, process, jnp.eye(d)[i]) for i in range(d)]
            return compose(terms, background=ConditionalScore(model, process, jnp.zeros(d)))

        runner = eqx.filter_jit(run)
        calls = {
            "exact_ms": (runner, (exact, x0)),
            "single_exact_ms": (runner, (fam.score(process, tuple(range(d))), x0)),
            "local_ms": (runner, (learned(local), x0)),
            "mlp_ms": (runner, (learned(mlp), x0)),
        }
        seconds = _record.median_seconds(calls, args.repeats)
        row = {"n_slots": d, **{k: round(1e3 * v, 2) for k, v in seconds.items()}}
        print(row, flush=True)
        rows.append(row)
    _record.write(args.out, "composition", vars(args), rows)


if __name__ == "__main__":
    main()
