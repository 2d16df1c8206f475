"""M3G: the cost of one training step against the number of views k and the batch size n.

One step is what ``otdiff.ot.m3g.train`` scans (the trainer's ``otdiff.train.make_step``): embed
``k`` views of ``n`` digits with the chapter's encoder (an MLP 64-256-256-16 onto the sphere),
evaluate the loss and its gradient with respect to the weights, and apply one Adam update. The losses compared, on the same views:

* ``m3g``: the multi-marginal matching gap (``otdiff.ot.m3g.m3g_loss``: MM-Sinkhorn on the
  ``n**k`` circular-variance tensor, Danskin's gradient) at ``--epsilon``;
* ``infonce_pairwise``: the mean InfoNCE over the ``k(k-1)/2`` pairs of views (temperature 0.1).

The encoder's weights come from a short M3G run (``--warm-steps`` steps, k = 3, n = 32; cached by
``train_cached``), so that the embeddings, hence MM-Sinkhorn's iteration counts, are those of
training rather than of random weights (which converge in one block of 10 sweeps). Rows per
``(k, n)``: the tensor's entries and its size in float32, XLA's planned temporary memory of the
compiled M3G step (``memory_analysis().temp_size_in_bytes``), the MM-Sinkhorn sweeps of the timed
batch, the median step times (interleaved repeats after a compiling warm-up) and their ratio.
Sizes whose tensor exceeds ``--max-entries`` are skipped. Results go to
``benchmarks/results/m3g.json``.

Usage: ``python benchmarks/bench_m3g.py [--views 2 3 4 5] [--batch 16 32 64] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import _record
import jax
import optax

from otdiff import train
from otdiff.data import load_digits
from otdiff.ot import m3g

RESULTS = Path(__file__).resolve().parent / "results" / "m3g.json"


def make_step(static, loss_name: str, epsilon: float):
    """The trainer's step (``otdiff.train.make_step``, Adam, no EMA) on a fixed batch of views."""
    optimizer = optax.adam(1e-3)

    def loss(encoder, key, views):
        z = m3g.embed(encoder, views)
        if loss_name == "m3g":
            return m3g.m3g_loss(z, epsilon)
        return m3g.infonce_pairwise(z, 0.1)

    step = train.make_step(
        loss, optimizer, static=static, sample_batch=lambda key, views: views, ema_decay=None
    )
    return jax.jit(step), optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epsilon", type=float, default=0.03)
    parser.add_argument("--max-entries", type=int, default=2**21)
    parser.add_argument("--warm-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = load_digits()
    warm_config = m3g.TrainConfig(n_steps=args.warm_steps, epsilon=args.epsilon)
    encoder = m3g.train_cached([0], data.train_images, warm_config, verbose=True)[0].encoder
    params, static = train.split(encoder)

    rows = []
    print(
        f"{'k':>2} {'n':>4} {'entries':>11} {'tensor MiB':>10} {'temp MiB':>9} {'sweeps':>6} "
        f"{'M3G ms':>9} {'InfoNCE ms':>10} {'ratio':>7}"
    )
    for k in args.views:
        for n in args.batch:
            entries = n**k
            row = {"n_views": k, "batch_size": n, "entries": entries}
            row["tensor_mib"] = round(4 * entries / 2**20, 3)
            if entries > args.max_entries:
                row["skipped"] = f"{entries:,} entries > --max-entries {args.max_entries:,}"
                rows.append(row)
                print(f"{k:2d} {n:4d} {entries:11,d} skipped")
                continue
            views = m3g.make_views(jax.random.key(k * 1000 + n), data.train_images[:n], k)
            m3g_step, optimizer = make_step(static, "m3g", args.epsilon)
            nce_step, _ = make_step(static, "infonce_pairwise", args.epsilon)
            state = train.init(params, optimizer, ema=False)
            step_key = jax.random.key(0)
            compiled = m3g_step.lower(step_key, state, views).compile()
            memory = compiled.memory_analysis()
            temp = None if memory is None else int(memory.temp_size_in_bytes)
            z = m3g.embed(encoder, views)
            sweeps = int(m3g.matching_gap(z, args.epsilon).n_iterations)
            times = _record.median_seconds(
                {
                    "m3g": (m3g_step, (step_key, state, views)),
                    "infonce": (nce_step, (step_key, state, views)),
                },
                args.repeats,
            )
            row.update(
                temp_mib=None if temp is None else round(temp / 2**20, 3),
                sweeps=sweeps,
                m3g_step_ms=round(1e3 * times["m3g"], 3),
                infonce_step_ms=round(1e3 * times["infonce"], 3),
                ratio=round(times["m3g"] / times["infonce"], 2),
            )
            rows.append(row)
            temp_text = "-" if temp is None else f"{temp / 2**20:9.2f}"
            print(
                f"{k:2d} {n:4d} {entries:11,d} {row['tensor_mib']:10.2f} {temp_text:>9} "
                f"{sweeps:6d} {row['m3g_step_ms']:9.2f} {row['infonce_step_ms']:10.2f} "
                f"{row['ratio']:7.1f}"
            )
    import ott

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["max_entries_log2"] = round(math.log2(args.max_entries), 2)
    _record.write(args.out, "m3g", settings, rows, ott=ott.__version__)


if __name__ == "__main__":
    main()
