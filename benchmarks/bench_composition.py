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

A second table measures the canvas experiment (``--canvas-k``, written to
``benchmarks/results/composition_canvas.json``) with the trained location-conditioned network of
the chapter (:func:`otdiff.zoo.chapter_canvas_model`: the ``"canvas"`` zoo recipe under the
``demo`` preset, ``"canvas_full"`` under ``full``; a cell-local
:class:`otdiff.diffusion.conditional.LocalCellNet`). Per number ``k`` of composed cells (the
diagonal first), reverse-diffusion runs of ``--canvas-n-steps`` steps of Euler-Maruyama on
``--canvas-n-samples`` canvases of 12x12, one per sampler seed (``--canvas-seeds`` seeds):

* ``composed_ms``: composed over ``k`` cells against the empty canvas
  (:func:`otdiff.diffusion.conditional.compose_conditions`, ``k + 1`` network calls per step);
* ``single_ms``: the run with one condition (one call per step, the cost of sampling one
  conditional model);
* ``success_projective``, ``success_bayes``, ``success_product``: the median over the seeds of the
  share of canvases with objects detected in exactly the ``k`` cells
  (:meth:`otdiff.data.Canvas.success`) for the composition against the empty canvas, against the
  unconditional law (the Bayes composition, background
  :meth:`otdiff.data.Canvas.null_condition`) and with no background (the plain product), from the
  same initial noise and key per seed; ``*_min`` and ``*_max``: the spread over the seeds;
* ``objects_projective``, ``objects_bayes``, ``objects_product``: the mean number of detected
  objects per canvas (all seeds);
* ``peak_projective``, ``peak_bayes``, ``peak_product``: the median over canvases, seeds and
  composed cells of a cell's brightest pixel (a blob's height is 1, the detector's threshold 0.5).

Each timing is the median of ``--repeats`` calls after a compiling warm-up (interleaved rounds,
``block_until_ready``). Results go to ``benchmarks/results/composition.json``.

Usage: ``python benchmarks/bench_composition.py [--slots 2 4 8] [--canvas-k 1 2 3] [--repeats 5]``
(``--slots`` or ``--canvas-k`` with no value skips that table).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import _record
import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff import zoo
from otdiff.data import canvas, slots
from otdiff.diffusion import LinearVP, euler_maruyama
from otdiff.diffusion.composition import compose
from otdiff.diffusion.conditional import (
    ConditionalMLP,
    ConditionalScore,
    LocalSlotNet,
    compose_conditions,
)

RESULTS = Path(__file__).resolve().parent / "results" / "composition.json"
CANVAS_RESULTS = Path(__file__).resolve().parent / "results" / "composition_canvas.json"


def bench_canvas(args) -> None:
    """The canvas table (module docstring): cost and success of the three compositions."""
    zoo_model = zoo.chapter_canvas_model(verbose=False)
    model, process = zoo_model.model, zoo_model.process
    board = canvas(12, 3)
    keys = [jax.random.key(s) for s in range(args.canvas_seeds)]
    x0s = [process.prior_sample(key, (args.canvas_n_samples, board.dim)) for key in keys]

    def run(model, conditions, background, x0, key):
        score = compose_conditions(model, process, conditions, background=background)
        return euler_maruyama(key, score, process, x0, args.canvas_n_steps).x

    def single(model, condition, x0, key):
        score = ConditionalScore(model, process, condition)
        return euler_maruyama(key, score, process, x0, args.canvas_n_steps).x

    rows = []
    single_run = eqx.filter_jit(single)
    composed_run = eqx.filter_jit(run)
    backgrounds = {
        "projective": board.condition(()),
        "bayes": board.null_condition(),
        "product": None,
    }
    masks = board.cell_masks().astype(bool)
    for k in args.canvas_k:
        cells = (0, 4, 8)[:k] if k <= 3 else tuple(range(k))  # the diagonal first
        conditions = jnp.stack([board.condition((i,)) for i in cells])
        calls = {
            "single_ms": (single_run, (model, board.condition(cells), x0s[0], keys[0])),
            "composed_ms": (
                composed_run,
                (model, conditions, backgrounds["projective"], x0s[0], keys[0]),
            ),
        }
        seconds = _record.median_seconds(calls, args.repeats)
        row = {"k": k, "cells": list(cells), **{n: round(1e3 * v, 1) for n, v in seconds.items()}}
        row["ratio"] = round(row["composed_ms"] / row["single_ms"], 2)
        for name, background in backgrounds.items():
            xs = [
                composed_run(model, conditions, background, x0, key)
                for x0, key in zip(x0s, keys, strict=True)
            ]
            shares = [float(jnp.mean(board.success(x, cells))) for x in xs]
            x = jnp.concatenate(xs)
            peaks = jnp.max(jnp.where(masks, x[:, None, :], -jnp.inf), axis=-1)[:, list(cells)]
            row[f"success_{name}"] = round(statistics.median(shares), 3)
            row[f"success_{name}_min"] = round(min(shares), 3)
            row[f"success_{name}_max"] = round(max(shares), 3)
            row[f"objects_{name}"] = round(float(jnp.mean(board.count(x))), 2)
            row[f"peak_{name}"] = round(float(jnp.median(peaks)), 3)
        print(row, flush=True)
        rows.append(row)
    settings = {
        n: getattr(args, n)
        for n in ("canvas_k", "canvas_n_samples", "canvas_n_steps", "canvas_seeds", "repeats")
    }
    info = zoo_model.info
    settings["model"] = (
        f"{info['name']} seed {info['seed']}, {info['n_steps']} training steps, "
        f"recipe {info['recipe_hash']}"
    )
    _record.write(args.canvas_out, "composition_canvas", settings, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--canvas-k", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--canvas-n-samples", type=int, default=200)
    parser.add_argument("--canvas-n-steps", type=int, default=200)
    parser.add_argument("--canvas-seeds", type=int, default=5)
    parser.add_argument("--canvas-out", type=Path, default=CANVAS_RESULTS)
    args = parser.parse_args()
    if args.slots:
        bench_slots(args)
    if args.canvas_k:
        bench_canvas(args)


def bench_slots(args) -> None:
    """The slots table (module docstring)."""
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
