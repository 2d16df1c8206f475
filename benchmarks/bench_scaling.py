"""How the cost of the three workloads that grow with data scales with n: Sinkhorn, SMC, SPELL.

For each size ``n`` it measures the median wall time (``--repeats`` interleaved rounds after a
compiling warm-up: one call of every variant per round, each ended by ``block_until_ready``, so
that a change of machine load affects the variants of a size alike) and XLA's own memory accounting of the compiled
program (``compiled.memory_analysis()``: arguments + outputs + temporaries, the peak the program
asks for), then fits the growth exponent ``p`` of ``time ~ n^p`` (least squares on the logs):

* ``sinkhorn``: ``otdiff.ot.solve`` between two Gaussian clouds of ``n`` points in 3-d, a fixed
  ``--sinkhorn-iterations`` iterations (a threshold it never reaches), so the time is the cost of
  an iteration times a constant: ``dense`` (the stabilised kernel on the stored cost matrix,
  ``O(n^2)`` memory), ``online`` (the log domain recomputing the cost ``--chunk`` rows at a time,
  ``O(n)`` memory) and ``sharded`` (dense, the points split across every device JAX sees with a
  ``data`` mesh; on one device this is the dense program plus its layout);
* ``smc``: ``otdiff.smc.run`` on a Gaussian random walk reweighted towards the origin in 2-d,
  ``--smc-steps`` steps, systematic resampling when the ESS falls under half, single device and
  sharded;
* ``spell``: ``otdiff.diffusion.spell.repellency`` of a batch of 64 predictions in 64-d against a
  protected bank of ``n`` points, ``chunk_size=--chunk``, single device and sharded (the bank
  split across the devices).

The default sizes run on a CPU in a few minutes; ``--large`` adds the sizes meant for a GPU (and
for several GPUs, where the sharded rows split the work): Sinkhorn online to 10^6 points, SMC to
10^6 particles, SPELL to 10^7 protected points. Results go to ``benchmarks/results/scaling.json``.

With ``--update``, only the workloads given by ``--workloads`` are run: their rows and fits
replace theirs in the existing results file, the other workloads' rows stay, and the file's
``settings.updated`` records, per workload, the date, machine and settings of the run its rows
come from (the file's own date and machine stay those of the other rows).

Usage: ``python benchmarks/bench_scaling.py [--large] [--repeats 3]
[--workloads spell --update]``.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import _record
import jax
import jax.numpy as jnp
import numpy as np

from otdiff import ot, smc
from otdiff.diffusion import spell
from otdiff.train import data_parallel_mesh

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
SMALL = {
    "sinkhorn": [500, 1000, 2000, 4000],
    "sinkhorn_online": [500, 1000, 2000, 4000, 8000],
    "smc": [1_000, 10_000, 100_000],
    "spell": [1_000, 10_000, 100_000],
}
LARGE = {
    "sinkhorn": [8000, 16000, 32000],
    "sinkhorn_online": [16_000, 64_000, 256_000, 1_000_000],
    "smc": [1_000_000],
    "spell": [1_000_000, 10_000_000],
}


def peak_bytes(fn, *args) -> int | None:
    """XLA's accounting of the compiled ``jax.jit(fn)``: arguments + outputs + temporaries."""
    try:
        stats = jax.jit(fn).lower(*args).compile().memory_analysis()
        return int(
            stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        )
    except Exception:  # a backend without memory statistics
        return None


def fit_exponent(sizes, seconds) -> float | None:
    """The slope of log(time) against log(n), or None with fewer than two sizes."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def clouds(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (0.5 + 0.8 * rng.standard_normal((n, 3))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def sinkhorn_rows(sizes, online_sizes, n_iterations, chunk, repeats, mesh) -> list[dict]:
    rows = []
    variants = {
        "dense": (sizes, dict(lse_mode="auto")),
        "online": (online_sizes, dict(lse_mode=True, chunk_size=chunk)),
        "sharded": (sizes, dict(lse_mode="auto", mesh=mesh)),
    }
    for n in sorted({n for ns, _ in variants.values() for n in ns}):
        x, y = clouds(n)
        eps = float(ot.relative_epsilon(x[:1000], y[:1000], 0.05))
        calls = {}
        for variant, (ns, options) in variants.items():
            if n in ns:

                def call(x=x, y=y, eps=eps, options=options):
                    return ot.solve(
                        x, y, eps, threshold=1e-12, max_iterations=n_iterations,
                        inner_iterations=10, **options,
                    )  # fmt: skip

                calls[variant] = (call, ())
        medians = _record.median_seconds(calls, repeats)  # interleaved rounds
        a = jnp.full((n,), 1.0 / n)
        for variant, (call, _) in calls.items():
            core = dict(variants[variant][1])
            memory = peak_bytes(
                lambda x, y, a, e, core=core: ot.solve_core(
                    x, y, a, a, e, jnp.float32(1e-12), max_iterations=n_iterations, **core
                ).f,
                x, y, a, jnp.float32(eps),
            )  # fmt: skip
            rows.append(dict(workload="sinkhorn", variant=variant, n=n,
                             median_s=medians[variant], peak_bytes=memory,
                             iterations=int(call().n_iterations)))  # fmt: skip
            print(rows[-1])
    return rows


def _walk(n_steps: int) -> smc.FeynmanKac:
    def init(key, n):
        x = 2.0 * jax.random.normal(key, (n, 2))
        return x, -0.5 * jnp.sum(x**2, axis=-1)

    def step(key, x, scale):
        x_new = x + scale * jax.random.normal(key, x.shape)
        return x_new, -0.25 * jnp.sum(x_new**2, axis=-1)

    return smc.FeynmanKac(init, step, jnp.linspace(0.5, 0.1, n_steps))


def smc_rows(sizes, n_steps, repeats, mesh) -> list[dict]:
    rows = []
    model = _walk(n_steps)
    key = jax.random.key(0)
    for n in sizes:
        fns = {
            variant: jax.jit(lambda key, n=n, m=m: smc.run(key, model, n, mesh=m).log_evidence)
            for variant, m in (("single", None), ("sharded", mesh))
        }
        medians = _record.median_seconds({v: (fn, (key,)) for v, fn in fns.items()}, repeats)
        for variant, fn in fns.items():
            rows.append(dict(workload="smc", variant=variant, n=n, median_s=medians[variant],
                             peak_bytes=peak_bytes(fn, key), n_steps=n_steps))  # fmt: skip
            print(rows[-1])
    return rows


def spell_rows(sizes, chunk, repeats, mesh) -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (64, 64)).astype(np.float32))
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    for n in sizes:
        bank = jnp.asarray(rng.uniform(-1, 1, (n, 64)).astype(np.float32))
        banks = {"single": (bank, None), "sharded": (jax.device_put(bank, placed), mesh)}
        calls = {
            variant: (lambda b=b, m=m: spell.repellency(x, b, 2.0, chunk_size=chunk, mesh=m), ())
            for variant, (b, m) in banks.items()
        }
        medians = _record.median_seconds(calls, repeats)
        for variant in calls:
            rows.append(dict(workload="spell", variant=variant, n=n, median_s=medians[variant],
                             peak_bytes=None, batch=64, dim=64, chunk=chunk))  # fmt: skip
            print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add the GPU sizes")
    parser.add_argument("--sinkhorn-iterations", type=int, default=50)
    parser.add_argument("--smc-steps", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=["sinkhorn", "smc", "spell"])
    for name in SMALL:
        parser.add_argument(f"--{name.replace('_', '-')}-sizes", type=int, nargs="+",
                            help=f"replace the default sizes of {name}")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--update", action="store_true",
                        help="replace only these workloads' rows in the existing file")  # fmt: skip
    args = parser.parse_args()
    sizes = {k: v + (LARGE[k] if args.large else []) for k, v in SMALL.items()}
    for name in SMALL:
        given = getattr(args, f"{name}_sizes")
        sizes[name] = given if given else sizes[name]
    mesh = data_parallel_mesh()

    rows = []
    if "sinkhorn" in args.workloads:
        rows += sinkhorn_rows(sizes["sinkhorn"], sizes["sinkhorn_online"],
                              args.sinkhorn_iterations, args.chunk, args.repeats, mesh)  # fmt: skip
    if "smc" in args.workloads:
        rows += smc_rows(sizes["smc"], args.smc_steps, args.repeats, mesh)
    if "spell" in args.workloads:
        rows += spell_rows(sizes["spell"], args.chunk, args.repeats, mesh)

    fits = []
    for workload, variant in sorted({(r["workload"], r["variant"]) for r in rows}):
        sel = [r for r in rows if r["workload"] == workload and r["variant"] == variant]
        ns, ts = [r["n"] for r in sel], [r["median_s"] for r in sel]
        fits.append(dict(workload=workload, variant=variant, exponent=fit_exponent(ns, ts),
                         n_min=min(ns), n_max=max(ns)))  # fmt: skip
        print(f"{workload:9s} {variant:8s} time ~ n^{fits[-1]['exponent']:.2f} "
              f"(n = {min(ns)} to {max(ns)})")  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "update")}
    settings["n_devices"] = jax.device_count()
    output = args.output  # where _record.write puts it ($OTDIFF_BENCH_RESULTS may move it)
    if os.environ.get(_record.RESULTS_DIR_VAR):
        output = Path(os.environ[_record.RESULTS_DIR_VAR]) / args.output.name
    old = json.loads(output.read_text()) if args.update and output.is_file() else None
    if old:  # keep the other workloads' rows, and the file's date, machine and settings
        date = datetime.now(UTC).isoformat(timespec="seconds")
        run = settings | {"date": date, "machine": _record.machine()}
        updated = old["settings"].get("updated", {})
        updated |= {workload: run for workload in args.workloads}
        settings = old["settings"] | {"updated": updated}
        rows = [r for r in old["results"]["rows"] if r["workload"] not in args.workloads] + rows
        fits = [f for f in old["results"]["fits"] if f["workload"] not in args.workloads] + fits
    _record.write(args.output, "scaling", settings, {"rows": rows, "fits": fits})
    if old:  # the file's date and machine stay those of its other rows
        record = json.loads(output.read_text())
        record["date"], record["machine"] = old["date"], old["machine"]
        output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
