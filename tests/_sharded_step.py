"""Run by tests/test_diffusion_training.py in a subprocess with four fake CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX is imported, which the
test process has already done; this script compares one training step (and one chunk) on a
4-device data-parallel mesh with the same on one device and prints the results as JSON.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from otdiff import train
from otdiff.diffusion import LinearVP, ScoreMLP, dsm_loss
from otdiff.train import (
    data_parallel_mesh,
    make_chunk,
    make_optimizer,
    make_step,
    shard_batch,
    split,
)


def main() -> dict:
    out: dict = {"n_devices": jax.device_count()}
    loss = jax.tree_util.Partial(dsm_loss, process=LinearVP())
    data = jax.random.normal(jax.random.key(0), (512, 3)) * 2.0
    model = ScoreMLP(3, hidden=(32, 32), embed_dim=16, key=jax.random.key(1))
    opt = make_optimizer(1e-2, 10, warmup_steps=0)
    params, static = split(model)
    state = train.init(params, opt)
    mesh = data_parallel_mesh()
    out["mesh_shape"] = dict(mesh.shape)
    key = jax.random.key(2)

    # one step, one device against four
    step1 = jax.jit(make_step(loss, opt, static=static, batch_size=64))
    step4 = jax.jit(make_step(loss, opt, static=static, batch_size=64, mesh=mesh))
    s1, l1 = step1(key, state, data)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_rep, data_rep = jax.device_put(state, rep), jax.device_put(data, rep)
    compiled4 = step4.lower(key, state_rep, data_rep).compile()
    s4, l4 = compiled4(key, state_rep, data_rep)
    out["loss_1"], out["loss_4"] = float(l1["loss"]), float(l4["loss"])
    p1, p4 = ravel_pytree(s1.params)[0], ravel_pytree(s4.params)[0]
    out["params_max_abs_diff"] = float(jnp.max(jnp.abs(p1 - p4)))
    out["params_max_abs_change"] = float(jnp.max(jnp.abs(p1 - ravel_pytree(state.params)[0])))
    out["params_devices_4"] = len(jax.tree_util.tree_leaves(s4.params)[0].sharding.device_set)
    e1, e4 = ravel_pytree(s1.ema_params)[0], ravel_pytree(s4.ema_params)[0]
    out["ema_max_abs_diff"] = float(jnp.max(jnp.abs(e1 - e4)))

    # the batch is laid out across the four devices
    batch = shard_batch(data[:64], mesh)
    out["batch_devices"] = len(batch.sharding.device_set)
    out["batch_shard_shapes"] = sorted({tuple(s.data.shape) for s in batch.addressable_shards})
    # and the compiled step sums per-device gradients (an all-reduce across the mesh)
    out["has_all_reduce"] = "all-reduce" in compiled4.as_text()

    # a scanned chunk of five steps agrees as well
    c1 = make_chunk(make_step(loss, opt, static=static, batch_size=64), 5)
    c4 = make_chunk(make_step(loss, opt, static=static, batch_size=64, mesh=mesh), 5)
    sc1, lc1 = c1(key, state, data)
    sc4, lc4 = c4(key, state_rep, data_rep)
    out["chunk_loss_max_abs_diff"] = float(
        np.max(np.abs(np.asarray(lc1["loss"]) - np.asarray(lc4["loss"])))
    )
    out["chunk_params_max_abs_diff"] = float(
        jnp.max(jnp.abs(ravel_pytree(sc1.params)[0] - ravel_pytree(sc4.params)[0]))
    )

    # a batch that does not split evenly is refused with a clear message
    try:
        make_step(loss, opt, static=static, batch_size=66, mesh=mesh)
        out["bad_batch_error"] = None
    except ValueError as err:
        out["bad_batch_error"] = str(err)
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
