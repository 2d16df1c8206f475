"""SPELL's repellency: cost per sampler step against the size of the protected set.

The protected sets live in the digits space (64-d, in [-1, 1]): the 1,438 training digits of
``otdiff.data.load_digits`` repeated with small Gaussian jitter (std 0.1) up to ``K`` points, from
1,000 to 1,000,000. The batch is ``--batch`` test digits (predictions that land near the data, as
late in sampling). Rows per ``K``:

* ``repellency_ms``: ``otdiff.diffusion.spell.repellency`` alone (chunked scan, ``--chunk`` references per
  block: one matrix product screens each block, and a block that may hold a point inside a ball is
  recomputed exactly from the differences), at the radius ``r`` (``--radius-quantile`` of the
  test-to-train nearest-neighbour distances) and at ``r = 0`` (screening only);
* ``matmul_bound_ms``: the machine's time for the screen's matrix product alone, ``x @ z.T``
  (64 x 64 x ``K``, float32, the same precision), timed in the same interleaved rounds as the
  two rows above (one call of each per round), so that a change of load affects all three alike;
  ``ratio_to_matmul`` is ``repellency_ms`` over it (the search costs one screen and a few exact
  differences per row and block, so the product is its lower bound);
* ``unchunked_ms``: the same with ``chunk_size=None`` (one block), only up to ``--max-unchunked``
  points (its exact branch holds an ``(n, K, d)`` array);
* ``step_plain_ms`` / ``step_spell_ms``: one Euler-Maruyama step of the reverse SDE on the batch
  with a digits-sized noise predictor (``ScoreMLP(64, hidden=(256, 256, 256))``; random weights,
  the cost does not depend on them), without and with the repellency hook (which adds one
  denoiser call and the scan over the protected set), and their ratio ``overhead`` (the plain
  step is re-timed next to each row, so both see the same machine load).

Each timing is the median of ``--repeats`` calls after a compiling warm-up, with
``block_until_ready``. Results go to ``benchmarks/results/spell.json``.

Usage: ``python benchmarks/bench_spell.py [--sizes 1000 10000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
import jax.numpy as jnp
import numpy as np
from _record import median_time as median_seconds

from otdiff.data import load_digits
from otdiff.diffusion import LinearVP, ScoreMLP, euler_maruyama, score_from_eps, spell

RESULTS = Path(__file__).resolve().parent / "results" / "spell.json"


def protected_set(train: np.ndarray, k: int, seed: int = 0) -> jax.Array:
    """``k`` jittered copies of the training digits (std 0.1), in float32."""
    rng = np.random.default_rng(seed)
    idx = np.arange(k) % len(train)
    z = train[idx] + 0.1 * rng.standard_normal((k, train.shape[1])).astype(np.float32)
    return jnp.asarray(z, jnp.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--radius-quantile", type=float, default=0.1)
    parser.add_argument("--max-unchunked", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = load_digits()
    train = data.train_images
    x = jnp.asarray(data.test_images[: args.batch])
    nn = np.asarray(spell.nearest_distance(x, jnp.asarray(train)))
    radius = float(np.quantile(nn, args.radius_quantile))

    process = LinearVP()
    model = ScoreMLP(64, hidden=(256, 256, 256), embed_dim=64, key=jax.random.key(0))
    score = score_from_eps(model, process)
    t_step = 0.05  # a late step: predictions near the data, where the term is most active

    def one_step(x, hook):
        # one Euler-Maruyama step from t_step to t_step - 0.01, with or without the hook
        res = euler_maruyama(
            jax.random.key(1), score, process, x, 1, t_min=t_step - 0.01, t_max=t_step, hook=hook
        )
        return res.x

    def plain_step(x):
        return one_step(x, None)

    plain = jax.jit(plain_step)

    rows = []
    for k in args.sizes:
        z = protected_set(train, k)

        def chunked_repellency(x, z, r):
            return spell.repellency(x, z, r, chunk_size=args.chunk)

        rep = jax.jit(chunked_repellency)
        row = {"protected": k, "dim": 64, "batch": args.batch, "chunk_size": args.chunk}
        # the bound: the screen's one matrix product, 64 x 64 x K, timed in the same rounds
        bound = jax.jit(lambda x, z: jnp.matmul(x, z.T, precision=jax.lax.Precision.HIGHEST))
        times = _record.median_seconds(
            {
                "repellency": (rep, (x, z, radius)),
                "screen_only": (rep, (x, z, 0.0)),
                "matmul": (bound, (x, z)),
            },
            repeats=args.repeats,
        )
        row["repellency_ms"] = 1e3 * times["repellency"]
        row["repellency_screen_only_ms"] = 1e3 * times["screen_only"]
        row["matmul_bound_ms"] = 1e3 * times["matmul"]
        row["ratio_to_matmul"] = times["repellency"] / times["matmul"]
        result = rep(x, z, radius)
        row["active_fraction"] = float(jnp.mean(result.n_active > 0))
        row["mean_active_balls"] = float(jnp.mean(result.n_active))
        if k <= args.max_unchunked:
            full = jax.jit(spell.repellency)  # one pass over all protected points
            row["unchunked_ms"] = 1e3 * median_seconds(full, x, z, radius, repeats=args.repeats)
            diff = jnp.max(jnp.abs(full(x, z, radius).delta - result.delta))
            row["chunked_vs_unchunked_max_abs_diff"] = float(diff)
        else:
            row["unchunked_ms"] = None

        def spell_step(x, z, r):
            hook = spell.repellency_hook(
                score, process, z, radius=r, strength=1.6, chunk_size=args.chunk
            )
            return one_step(x, hook)

        step = jax.jit(spell_step)
        row["step_plain_ms"] = 1e3 * median_seconds(plain, x, repeats=args.repeats)
        row["step_spell_ms"] = 1e3 * median_seconds(step, x, z, radius, repeats=args.repeats)
        row["overhead"] = row["step_spell_ms"] / row["step_plain_ms"]
        rows.append(row)
        unchunked = "-" if row["unchunked_ms"] is None else f"{row['unchunked_ms']:.2f}"
        print(
            f"K={k:>9,}  repellency {row['repellency_ms']:9.2f} ms (matmul "
            f"{row['matmul_bound_ms']:8.2f}, x{row['ratio_to_matmul']:.2f}; screen only "
            f"{row['repellency_screen_only_ms']:8.2f})  unchunked "
            f"{unchunked:>8}  "
            f"step {row['step_plain_ms']:.2f} -> {row['step_spell_ms']:.2f} ms "
            f"(x{row['overhead']:.1f})  active {row['active_fraction']:.2f}",
            flush=True,
        )
        del z

    settings = {
        "sizes": args.sizes,
        "batch": args.batch,
        "chunk_size": args.chunk,
        "radius": radius,
        "radius_quantile": args.radius_quantile,
        "repeats": args.repeats,
        "statistic": "median",
        "protected_set": "training digits repeated with N(0, 0.1^2) jitter, 64-d in [-1, 1]",
        "batch_points": "test digits (late-sampling predictions)",
        "network": "ScoreMLP(64, hidden=(256, 256, 256), embed_dim=64), random weights",
    }
    _record.write(
        args.out, "spell: repellency cost per step against the protected-set size", settings, rows
    )


if __name__ == "__main__":
    main()
