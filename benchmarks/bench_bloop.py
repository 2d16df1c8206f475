"""Cost of gradient surgery per optimisation step: Bloop against the sum, PCGrad and plain Adam.

On the digits MLP of ``otdiff.optim.problems`` (Lipschitz-proxy auxiliary loss), one step is: a
mini-batch, the gradient(s), the direction, an Adam update. The rows:

* ``adam (main only)``: one gradient, no surgery (the floor);
* ``sum``, ``project``, ``pcgrad``, ``bloop``: two gradients and the named direction
  (``optax.chain(surgery, adam)``).

Two timings per row: a whole step, and the direction alone (the surgery transform applied to
fixed gradients), which isolates the overhead of the projection and the EMA. Each timing is a
jitted ``jax.lax.scan`` over ``--inner`` steps, run once to compile, then ``--repeats`` times with
``block_until_ready`` (the rows interleaved, round after round); the table shows the median per
step.

Usage::

    python benchmarks/bench_bloop.py                # writes benchmarks/results/bloop.json
    python benchmarks/bench_bloop.py --hidden 32 256,128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from _record import median_seconds

from otdiff import optim
from otdiff.optim import problems

RESULTS = Path(__file__).resolve().parent / "results" / "bloop.json"


def step_timer(problem, method: str | None, batch_size: int, inner: int):
    """A jitted function running ``inner`` training steps of ``method`` (None: plain Adam)."""
    adam = optax.adam(1e-3)
    if method is None:
        tx = adam

        def one(carry, key):
            params, state = carry
            batch = problem.sample_batch(key, batch_size)
            g = jax.grad(problem.main_loss)(params, batch)
            updates, state = tx.update(g, state, params)
            return (optax.apply_updates(params, updates), state), None

    else:
        tx = optax.chain(optim.surgery(method, lam=0.1, ema_rate=0.01), adam)

        def one(carry, key):
            params, state = carry
            batch = problem.sample_batch(key, batch_size)
            g = jax.grad(problem.main_loss)(params, batch)
            a = jax.grad(problem.aux_loss)(params, batch)
            updates, state = tx.update(g, state, params, aux_grad=a)
            return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params, key):
        carry = (params, tx.init(params))
        (params, _), _ = jax.lax.scan(one, carry, jax.random.split(key, inner))
        return params

    return run


def direction_timer(method: str, inner: int):
    """A jitted function applying the surgery transform ``inner`` times to fixed gradients."""
    tx = optim.surgery(method, lam=0.1, ema_rate=0.01)

    @jax.jit
    def run(g, a):
        def one(state, scale):
            g_t = jax.tree_util.tree_map(lambda x: x * scale, g)  # a changing main gradient
            d, state = tx.update(g_t, state, aux_grad=a)
            return state, optax.tree_utils.tree_vdot(d, d)

        _, out = jax.lax.scan(one, tx.init(g), jnp.linspace(0.5, 1.5, inner))
        return out

    return run


def bench(hidden: tuple[int, ...], batch_size: int, inner: int, repeats: int) -> dict:
    """Time every row on an MLP with the given hidden widths."""
    problem = problems.digits(hidden)
    key = jax.random.key(0)
    params = problem.init_params(key)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    g = jax.grad(problem.main_loss)(params, problem.sample_batch(key, batch_size))
    a = jax.grad(problem.aux_loss)(params)

    methods = (None, "sum", "project", "pcgrad", "bloop")
    calls = {}
    for method in methods:
        calls[("step", method)] = (step_timer(problem, method, batch_size, inner), (params, key))
        if method is not None:
            calls[("direction", method)] = (direction_timer(method, inner), (g, a))
    seconds = median_seconds(calls, repeats)
    rows = []
    for method in methods:
        direction = seconds.get(("direction", method))
        rows.append(
            {
                "method": method or "adam (main only)",
                "step_us": seconds[("step", method)] / inner * 1e6,
                "direction_us": None if direction is None else direction / inner * 1e6,
            }
        )
    adam = rows[0]["step_us"]
    plain_sum = rows[1]["step_us"]
    for r in rows:
        r["step_vs_adam"] = r["step_us"] / adam
        r["step_vs_sum"] = r["step_us"] / plain_sum
    return {"hidden": list(hidden), "parameters": int(n_params), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hidden",
        nargs="+",
        default=["32", "256,128"],
        help="MLP configurations: comma-separated hidden widths, one per configuration",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--inner", type=int, default=500, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    configs = [tuple(int(w) for w in spec.split(",")) for spec in args.hidden]
    device = jax.devices()[0]
    result = {
        "benchmark": "bloop: time per optimisation step on the digits MLP",
        "batch_size": args.batch_size,
        "inner_steps": args.inner,
        "repeats": args.repeats,
        "statistic": "median",
        "device": f"{device.platform}: {device.device_kind}",
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "configs": [bench(h, args.batch_size, args.inner, args.repeats) for h in configs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    for config in result["configs"]:
        widths = "-".join(map(str, config["hidden"]))
        print(
            f"\ndigits MLP 64-{widths}-10 ({config['parameters']} parameters), batch "
            f"{args.batch_size}, {result['device']}, median of {args.repeats}"
        )
        print(f"{'method':>18} {'step (us)':>10} {'x adam':>7} {'x sum':>6} {'direction (us)':>15}")
        for r in config["rows"]:
            d = "" if r["direction_us"] is None else f"{r['direction_us']:15.1f}"
            print(
                f"{r['method']:>18} {r['step_us']:10.1f} {r['step_vs_adam']:7.2f} "
                f"{r['step_vs_sum']:6.2f} {d}"
            )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
