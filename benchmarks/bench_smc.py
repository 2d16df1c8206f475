"""Cost of SMC-guided sampling per particle against plain reverse sampling with the same network.

Three samplers run the same number of reverse steps on the same batch of 2-D particles:

* ``smc``: ``otdiff.diffusion.energy.low_temperature_smc`` on an ``EnergyMLP`` (inverse temperature 2): per step
  one ``value_and_grad`` of the energy (the gradient proposes, the value weighs), the Gaussian
  log-densities of the two kernels, the ESS and, when it falls under half, systematic resampling;
* ``reverse (energy)``: ``otdiff.diffusion.euler_maruyama`` with the energy's score
  :math:`-\\nabla E` (the same network and steps, no weights): one forward and one backward pass;
* ``reverse (score net)``: ``euler_maruyama`` with a ``ScoreMLP`` of the same widths (forward pass
  only), what a plain diffusion model costs.

The networks are untrained (their cost does not depend on the weights). Each sampler is jitted,
compiled by a warm-up call, then timed ``--repeats`` times with ``block_until_ready`` (rounds
interleaved); the median is reported per particle and per step, with the ratios of SMC to both
plain samplers. The goal of the issue: SMC at most 3 times plain reverse sampling.

Usage::

    python benchmarks/bench_smc.py        # writes benchmarks/results/smc.json
    python benchmarks/bench_smc.py --particles 1000 4000 --steps 100 --width 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _record
import jax
from _record import median_seconds

from otdiff.diffusion import EnergyMLP, LinearVP, ScoreMLP, euler_maruyama, score_from_eps
from otdiff.diffusion import energy as en

RESULTS = Path(__file__).resolve().parent / "results" / "smc.json"


def bench(n: int, steps: int, width: int, repeats: int) -> list[dict]:
    process = LinearVP()
    hidden = (width,) * 3
    energy = EnergyMLP(2, hidden=hidden, key=jax.random.key(0), data_std=1.5, process=process)
    net = ScoreMLP(2, hidden=hidden, key=jax.random.key(1), data_std=1.5, process=process)

    @jax.jit
    def smc_run(key, energy):
        out = en.low_temperature_smc(
            key, energy, process, n, 2, inverse_temperature=2.0, n_steps=steps
        )
        return out.x, out.log_weights

    @jax.jit
    def reverse_energy(key, energy):
        x0 = jax.random.normal(key, (n, 2))
        return euler_maruyama(key, en.energy_score(energy), process, x0, steps).x

    @jax.jit
    def reverse_score(key, net):
        x0 = jax.random.normal(key, (n, 2))
        return euler_maruyama(key, score_from_eps(net, process), process, x0, steps).x

    key = jax.random.key(2)
    calls = {
        "smc": (smc_run, (key, energy)),
        "reverse (energy)": (reverse_energy, (key, energy)),
        "reverse (score net)": (reverse_score, (key, net)),
    }
    seconds = median_seconds(calls, repeats)
    rows = []
    for name, s in seconds.items():
        rows.append(
            {
                "particles": n,
                "steps": steps,
                "width": width,
                "sampler": name,
                "seconds": s,
                "us_per_particle_step": s / (n * steps) * 1e6,
                "smc_over_this": seconds["smc"] / s,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    for n in args.particles:
        rows += bench(n, args.steps, args.width, args.repeats)
    print(f"{'particles':>9} {'sampler':>20} {'s':>8} {'us/particle/step':>17} {'SMC / this':>11}")
    for r in rows:
        print(
            f"{r['particles']:>9} {r['sampler']:>20} {r['seconds']:8.3f}"
            f" {r['us_per_particle_step']:17.3f} {r['smc_over_this']:11.2f}"
        )
    _record.write(
        args.output,
        "smc: SMC-guided sampling against plain reverse sampling, same network and steps",
        {k: v for k, v in vars(args).items() if k != "output"},
        rows,
    )


if __name__ == "__main__":
    main()
