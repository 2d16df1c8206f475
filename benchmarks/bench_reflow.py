"""Simple ReFlow: samples per second and quality against NFE, for flows and the DDIM baseline.

Two settings, with the chapter's trained models (``demo`` preset, first seed; shipped with the
book, else cached or trained by ``otdiff.flows.chapter_ring`` and
``otdiff.zoo.chapter_reflow_digits``):

* **ring**: the 1-RF teacher and the 2-RF student of the 2-D ring, Euler at NFE 1, 2, 4 and Heun
  at NFE 9 (5 steps, the last an Euler step), ``--n-ring`` samples; quality is the energy distance
  to 4,096 held-out points (``otdiff.metrics.energy_distance``).
* **digits**: the 2-RF student, the zoo's VP ``"digits_unet"`` teacher as a flow (the same
  ladder), and the teacher's DDIM at the same NFE and at 100 steps, ``--n-digits`` samples;
  quality is the Fréchet distance to the real test digits in the digit classifier's features
  (``otdiff.metrics.DigitClassifier.frechet_distance``) and the share the classifier recognises
  with probability above 0.8, every sampler's final samples clipped to
  the data range [-1, 1] (as the chapter does).

Each timing is the median of ``--repeats`` calls after a compiling warm-up
(``block_until_ready``); ``samples_per_second`` is the number of samples over that time. Results
go to ``benchmarks/results/reflow.json``.

Usage: ``python benchmarks/bench_reflow.py [--n-ring 10000] [--n-digits 1000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
import numpy as np
from _record import median_time

from otdiff import data, diffusion, flows, metrics, zoo

RESULTS = Path(__file__).resolve().parent / "results" / "reflow.json"
LADDER = ((1, "euler"), (2, "euler"), (4, "euler"), (9, "heun"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ring", type=int, default=10_000)
    parser.add_argument("--n-digits", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []

    run = flows.chapter_ring(scale="demo", seeds=[0], variants=["2-RF"])[0]
    x1 = jax.random.normal(jax.random.key(1), (args.n_ring, 2))
    for name, model in (("1-RF", run.teacher), ("2-RF", run.students["2-RF"])):
        for nfe, solver in LADDER:
            n = flows.steps_for_nfe(nfe, solver)
            fn = jax.jit(lambda x, m=model, n=n, s=solver: flows.sample_flow(m, x, n, solver=s).x)
            seconds = median_time(fn, x1, repeats=args.repeats)
            quality = float(metrics.energy_distance(fn(x1)[:4096], run.held_out))
            rows.append({
                "setting": "ring", "model": name, "nfe": nfe, "solver": solver,
                "seconds": seconds, "samples_per_second": args.n_ring / seconds,
                "energy_distance": quality,
            })  # fmt: skip
            print(rows[-1], flush=True)

    digits = zoo.chapter_reflow_digits(scale="demo")
    real = data.load_digits().test_images
    judge = metrics.DigitClassifier()
    x1 = jax.random.normal(jax.random.key(2), (args.n_digits, 64))
    teacher = digits.teacher

    def ddim(x, nfe):
        return diffusion.ddim(jax.random.key(0), teacher.score, teacher.process, x, nfe).x

    samplers = {
        "2-RF student": lambda n, s: (
            lambda x: flows.sample_flow(digits.students[0], x, n, solver=s).x
        ),
        "teacher flow": lambda n, s: lambda x: flows.sample_flow(digits.velocity, x, n, solver=s).x,
        "teacher DDIM": lambda n, s: lambda x: ddim(x, flows.nfe(n, s)),
    }
    grid = [(name, nfe, solver) for name in samplers for nfe, solver in LADDER]
    grid.append(("teacher DDIM", 100, "ddim"))
    for name, nfe, solver in grid:
        if solver == "ddim":
            fn = jax.jit(lambda x: ddim(x, 100))
        else:
            fn = jax.jit(samplers[name](flows.steps_for_nfe(nfe, solver), solver))
        seconds = median_time(fn, x1, repeats=args.repeats)
        x = np.clip(np.asarray(fn(x1)), -1.0, 1.0)  # final samples clipped to the data range
        rows.append({
            "setting": "digits", "model": name, "nfe": nfe, "solver": solver, "seconds": seconds,
            "samples_per_second": args.n_digits / seconds,
            "frechet_distance": float(judge.frechet_distance(x, real)),
            "recognised": judge.confident_fraction(x),
        })  # fmt: skip
        print(rows[-1], flush=True)

    _record.write(args.out, "reflow", vars(args), rows)


if __name__ == "__main__":
    main()
