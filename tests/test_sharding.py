"""The sharded paths on four forced host devices agree with the one-device runs.

``tests/_sharded_scale.py`` runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX starts):
Sinkhorn with the source points split across a 4-device mesh (the default stabilised kernel, the
log domain and the online mode) and SMC with the particles split across it (systematic and
multinomial resampling) and SPELL's repellency with the protected set split across it, each
against the same call on one device.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from otdiff import ot, smc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded(run_on_four_devices) -> dict:
    return run_on_four_devices("_sharded_scale.py", timeout=900)


@pytest.mark.parametrize("mode", ["auto", "log", "online"])
def test_sharded_sinkhorn_matches_one_device(sharded, mode):
    run = sharded["sinkhorn"][mode]
    assert run["converged"] and run["f_devices"] == 4  # the potentials live on four devices
    # float32 potentials of size ~1: the sums across devices change only the rounding (~1e-6)
    assert run["f_diff"] < 1e-4 and run["g_diff"] < 1e-4 and run["cost_diff"] < 1e-5
    assert run["iterations"][0] == run["iterations"][1]


def test_sharded_sinkhorn_refuses_uneven_splits(sharded):
    assert "multiple of the number of devices" in sharded["sinkhorn"]["bad_n_error"]


@pytest.mark.parametrize("resampler", ["systematic", "multinomial"])
def test_sharded_smc_gives_the_same_estimates_for_the_same_key(sharded, resampler):
    run = sharded["smc"][resampler]
    assert run["particles_devices"] == 4 and run["n_resampled"] >= 2  # resampling did happen
    assert run["same_resampled"] and run["same_ancestors"]  # global weights, same draws
    one, four = run["log_evidence"]
    assert abs(one - four) < 1e-5
    assert run["particles_diff"] < 1e-5 and run["log_weights_diff"] < 1e-5
    assert run["mean_diff"] < 1e-5 and run["ess_diff"] < 1e-2  # ESS ~ 10^2 to 10^3


def test_sharded_smc_refuses_uneven_splits(sharded):
    assert "n_particles must be a multiple" in sharded["smc"]["bad_n_error"]


@pytest.mark.parametrize("case", ["plain", "masked"])
def test_sharded_spell_gives_the_same_corrections(sharded, case):
    run = sharded["spell"][case]
    assert run["n_active"] > 50 and run["same_counts"]  # many balls active, the same ones
    assert run["delta_diff"] < 1e-5 * max(1.0, run["delta_scale"])
    assert run["nearest_diff"] < 1e-5


def test_sharded_spell_refuses_uneven_splits(sharded):
    assert "number of protected points K must be a multiple" in sharded["spell"]["bad_k_error"]


def test_one_device_mesh_is_accepted_and_bad_meshes_are_refused():
    # in this process JAX sees one device: a one-device mesh runs the sharded code path
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    x = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
    plain, meshed = ot.solve(x, x + 1, 0.5), ot.solve(x, x + 1, 0.5, mesh=mesh)
    np.testing.assert_allclose(plain.f, meshed.f, atol=1e-5)
    with pytest.raises(TypeError, match="mesh must be None or a jax.sharding.Mesh"):
        ot.solve(x, x, 0.5, mesh="data")
    with pytest.raises(ValueError, match="axis named 'data'"):
        ot.solve(x, x, 0.5, mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("points",)))
    with pytest.raises(TypeError, match="mesh must be None"):
        smc.run(jax.random.key(0), None, 8, mesh=object())
