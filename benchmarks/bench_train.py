"""The cost of one training step: a bare compiled step, a ``lax.scan`` of steps, and ``fit``.

Two networks of the digits models, trained by denoising score matching on the 8x8 digits with
the cosine VP process and ``otdiff.train``'s optimiser and EMA: the ``"digits"`` MLP (three
hidden layers of 512, batches of 256) and the ``"digits_unet"`` U-Net (``otdiff.nn.UNet``,
channels 16 and 32, batches of 128), each built by its ``otdiff.zoo`` recipe. Three ways to run
the same steps (``otdiff.train.make_step``: minibatch, gradient, clipped Adam, EMA):

* ``bare step``: the step under ``jax.jit``, called once per step from Python;
* ``scan``: ``otdiff.train.make_chunk``, the steps in one compiled ``lax.scan`` (what
  ``fit`` ran for every model before it took the loop for convolutional losses on the CPU);
* ``fit``: ``otdiff.train.fit`` with one chunk of the same length (a second call, so that
  compilation is not timed).

Each row is one (network, method) pair: the median and fastest wall time per step over
``--repeats`` runs of ``--n-steps`` steps, the runs of all pairs interleaved so that the load of
a shared machine affects them alike, after one warm-up run of each that compiles.

Usage: ``python benchmarks/bench_train.py [--n-steps 20] [--repeats 3]``; results go to
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _record
import jax
import jax.numpy as jnp

from otdiff import train, zoo

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
MODELS = ("digits", "digits_unet")


def _runners(name: str, n_steps: int) -> dict:
    """``method -> run(seed)`` for the recipe ``name``; each run returns its final state."""
    rec = zoo.recipe(name)
    process = rec.process()
    data = jnp.asarray(rec.make_data(0))
    loss = rec.make_loss(process)
    model = rec.make_model(jax.random.key(0), process)
    params, static = train.split(model)
    optimizer = train.make_optimizer(rec.learning_rate, n_steps)
    state = train.init(params, optimizer)
    step = train.make_step(
        loss, optimizer, static=static, batch_size=rec.batch_size, ema_decay=rec.ema_decay
    )
    jitted = jax.jit(step)
    chunk = train.make_chunk(step, n_steps)

    def bare(seed):
        key, s = jax.random.key(seed), state
        for _ in range(n_steps):
            s, _ = jitted(jax.random.fold_in(key, s.step), s, data)
        return s

    def scan(seed):
        return chunk(jax.random.key(seed), state, data)[0]

    def fit(seed):
        return train.fit(
            jax.random.key(seed), model, data, loss, n_steps=n_steps, batch_size=rec.batch_size,
            learning_rate=rec.learning_rate, ema_decay=rec.ema_decay, chunk_size=n_steps,
        ).state  # fmt: skip

    return {"bare step": bare, "scan": scan, "fit": fit}, rec.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    runs, batch = {}, {}
    for name in args.models:
        methods, batch[name] = _runners(name, args.n_steps)
        for method, run in methods.items():
            start = time.perf_counter()
            jax.block_until_ready(run(0))  # compiles
            print(f"{name} / {method}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
            runs[name, method] = (run, [])
    for repeat in range(args.repeats):
        for run, times in runs.values():
            start = time.perf_counter()
            jax.block_until_ready(run(1 + repeat))
            times.append((time.perf_counter() - start) / args.n_steps)
    results = []
    for (name, method), (_, times) in runs.items():
        row = {
            "model": name,
            "method": method,
            "batch_size": batch[name],
            "step_median_ms": 1e3 * statistics.median(times),
            "step_min_ms": 1e3 * min(times),
        }
        results.append(row)
        print(row, flush=True)
    _record.write(args.out, "train", vars(args), results)


if __name__ == "__main__":
    main()
