"""Run by tests/test_sharding.py in a subprocess with four fake CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX is imported (the test
sets it in the subprocess's environment); this script runs the sharded paths of Sinkhorn, SMC
and SPELL on a 4-device mesh and on one device, and prints the differences as JSON.
"""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from otdiff import config, ot, smc
from otdiff.diffusion import spell
from otdiff.train import data_parallel_mesh


def _max_diff(u, v) -> float:
    return float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))


def _devices(array) -> int:
    return len(array.sharding.device_set)


def sinkhorn(mesh) -> dict:
    out = {}
    rng = np.random.default_rng(config.seed(0))
    x = rng.standard_normal((96, 3)).astype(np.float32)
    y = (0.5 + 0.8 * rng.standard_normal((72, 3))).astype(np.float32)
    eps = float(ot.relative_epsilon(x, y, 0.05))
    for name, options in {
        "auto": {},
        "log": dict(lse_mode=True),
        "online": dict(lse_mode=True, chunk_size=24),
    }.items():
        one = ot.solve(x, y, eps, threshold=1e-5, **options)
        four = ot.solve(x, y, eps, threshold=1e-5, mesh=mesh, **options)
        out[name] = dict(
            f_diff=_max_diff(one.f, four.f),
            g_diff=_max_diff(one.g, four.g),
            cost_diff=_max_diff(one.reg_ot_cost, four.reg_ot_cost),
            iterations=[int(one.n_iterations), int(four.n_iterations)],
            f_devices=_devices(four.f),
            converged=bool(four.converged),
        )
    try:
        ot.solve(x[:95], y, eps, mesh=mesh)
        out["bad_n_error"] = None
    except ValueError as err:
        out["bad_n_error"] = str(err)
    return out


def _model(dim: int, n_steps: int) -> smc.FeynmanKac:
    """A Gaussian random walk reweighted towards the origin: resampling happens."""

    def init(key, n):
        x = 2.0 * jax.random.normal(key, (n, dim))
        return x, -0.5 * jnp.sum(x**2, axis=-1)

    def step(key, x, scale):
        x_new = x + scale * jax.random.normal(key, x.shape)
        return x_new, -0.5 * jnp.sum(x_new**2, axis=-1) + 0.5 * jnp.sum(x**2, axis=-1) * 0.5

    return smc.FeynmanKac(init, step, jnp.linspace(0.5, 0.1, n_steps))


def particles(mesh) -> dict:
    model = _model(2, 12)
    key = jax.random.key(config.seed(1))
    out = {}
    for resampler in ("systematic", "multinomial"):
        fn = smc.RESAMPLERS[resampler]
        kw = dict(resampler=fn, ess_threshold=0.7, return_ancestors=True)
        one = jax.jit(lambda k, kw=kw: smc.run(k, model, 1024, **kw))(key)
        four = jax.jit(lambda k, kw=kw: smc.run(k, model, 1024, mesh=mesh, **kw))(key)
        out[resampler] = dict(
            log_evidence=[float(one.log_evidence), float(four.log_evidence)],
            particles_diff=_max_diff(one.particles, four.particles),
            log_weights_diff=_max_diff(one.log_weights, four.log_weights),
            ess_diff=_max_diff(one.ess, four.ess),
            n_resampled=int(np.sum(one.resampled)),
            same_resampled=bool(np.all(np.asarray(one.resampled) == np.asarray(four.resampled))),
            same_ancestors=bool(np.all(np.asarray(one.ancestors) == np.asarray(four.ancestors))),
            particles_devices=_devices(four.particles),
            mean_diff=_max_diff(
                jnp.sum(jnp.exp(one.log_weights)[:, None] * one.particles, 0),
                jnp.sum(jnp.exp(four.log_weights)[:, None] * four.particles, 0),
            ),
        )
    try:
        smc.run(key, model, 1022, mesh=mesh)
        out["bad_n_error"] = None
    except ValueError as err:
        out["bad_n_error"] = str(err)
    out["log_n"] = math.log(1024)
    return out


def shield(mesh) -> dict:
    rng = np.random.default_rng(config.seed(2))
    bank = rng.uniform(-1, 1, (4000, 8)).astype(np.float32)
    x = (bank[:64] + 0.05 * rng.standard_normal((64, 8))).astype(np.float32)  # near the bank
    mask = rng.uniform(size=4000) < 0.9
    out = {}
    for name, kw in {"plain": {}, "masked": dict(protected_mask=mask)}.items():
        one = spell.repellency(x, bank, 0.6, chunk_size=256, **kw)
        four = spell.repellency(x, bank, 0.6, chunk_size=256, mesh=mesh, **kw)
        out[name] = dict(
            delta_diff=_max_diff(one.delta, four.delta),
            delta_scale=float(np.max(np.abs(np.asarray(one.delta)))),
            same_counts=bool(np.all(np.asarray(one.n_active) == np.asarray(four.n_active))),
            n_active=int(np.sum(np.asarray(one.n_active))),
            nearest_diff=_max_diff(one.nearest, four.nearest),
        )
    try:
        spell.repellency(x, bank[:3998], 0.6, mesh=mesh)
        out["bad_k_error"] = None
    except ValueError as err:
        out["bad_k_error"] = str(err)
    return out


def main() -> dict:
    mesh = data_parallel_mesh()
    out: dict = {"n_devices": jax.device_count(), "mesh_shape": dict(mesh.shape)}
    out["sinkhorn"] = sinkhorn(mesh)
    out["smc"] = particles(mesh)
    out["spell"] = shield(mesh)
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
