"""Tests of otdiff.train and otdiff.checkpoint: the pure step from any loss, the EMA, chunking,
extra gradients, checkpoints (format, corruption, resume) and the data-parallel step; and of the
networks of otdiff.nn and otdiff.diffusion.networks."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from otdiff import config, train
from otdiff.checkpoint import CheckpointMismatchError, CorruptCheckpointError
from otdiff.checkpoint import load as load_checkpoint
from otdiff.checkpoint import read_metadata as read_checkpoint_metadata
from otdiff.checkpoint import save as save_checkpoint
from otdiff.diffusion import (
    CosineVP,
    EnergyMLP,
    InputScaling,
    LinearVP,
    ScoreConvNet,
    ScoreMLP,
    dsm_loss,
)
from otdiff.nn import SphereMLP, TimeConvNet, TimeEmbedding, TimeMLP, UNet
from otdiff.train import (
    TrainState,
    data_parallel_mesh,
    ema_update,
    fit,
    make_chunk,
    make_optimizer,
    make_step,
    split,
)

ROOT = Path(__file__).resolve().parents[1]
PROCESS = LinearVP()
DSM = jax.tree_util.Partial(dsm_loss, process=PROCESS)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.fixture(scope="module")
def data():
    return np.asarray(jax.random.normal(jax.random.key(config.seed(0)), (256, 2)) * 1.5, np.float32)


def tiny_mlp(dim=2, seed=1):
    return ScoreMLP(dim, hidden=(16, 16), embed_dim=8, key=jax.random.key(config.seed(seed)))


# -- networks ------------------------------------------------------------------------------------


def test_score_mlp_shapes_vmap_and_jit():
    model = tiny_mlp(3)
    x = jnp.ones((5, 3))
    t = jnp.linspace(0.1, 0.9, 5)
    out = jax.jit(jax.vmap(model))(x, t)
    assert out.shape == (5, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[1], model(x[1], t[1]), rtol=1e-5, atol=1e-6)
    # the time matters
    assert not np.allclose(model(x[0], 0.1), model(x[0], 0.9))


def test_score_and_energy_networks_share_the_time_mlp():
    """ScoreMLP and EnergyMLP are one TimeMLP each, with a vector or a scalar head."""
    key = jax.random.key(config.seed(0))
    score_net = ScoreMLP(2, hidden=(8, 8), embed_dim=8, key=key)
    energy_net = EnergyMLP(2, hidden=(8, 8), embed_dim=8, key=key)
    direct = TimeMLP(2, 2, hidden=(8, 8), embed_dim=8, key=key)
    np.testing.assert_array_equal(score_net(jnp.ones(2), 0.3), direct(jnp.ones(2), 0.3))
    assert energy_net(jnp.ones(2), 0.3).shape == ()
    # same key, same hidden layers: only the heads differ
    np.testing.assert_array_equal(energy_net.net.layers[0].weight, direct.layers[0].weight)


def test_score_convnet_shapes():
    model = ScoreConvNet(
        channels=8, n_blocks=1, embed_dim=8, groups=4, key=jax.random.key(config.seed(0))
    )
    x = jax.random.normal(jax.random.key(config.seed(1)), (4, 64))
    out = jax.vmap(model)(x, jnp.full((4,), 0.5))
    assert out.shape == (4, 64)
    assert np.all(np.isfinite(out))
    assert isinstance(model.net, TimeConvNet)


@pytest.mark.parametrize("process", [LinearVP(), CosineVP()], ids=["linear", "cosine"])
def test_time_embedding_and_scaling(process):
    emb = TimeEmbedding(8, key=jax.random.key(config.seed(0)))
    assert emb(0.3).shape == (8,)
    # the input scaling is 1/sqrt(alpha^2 v + sigma^2), read from the process (either schedule)
    scale = InputScaling(2.0, process)
    t = 0.4
    a2 = float(process.alpha(t)) ** 2
    np.testing.assert_allclose(scale(t), 1 / np.sqrt(a2 * 4.0 + 1 - a2), rtol=1e-5)
    m = ScoreMLP(
        2,
        hidden=(8,),
        embed_dim=8,
        key=jax.random.key(config.seed(0)),
        data_std=2.0,
        process=process,
    )
    assert m(jnp.ones(2), 0.5).shape == (2,)
    # the process in the scaling is not trainable
    params, _ = split(m)
    plain = split(ScoreMLP(2, hidden=(8,), embed_dim=8, key=jax.random.key(config.seed(0))))[0]
    assert len(jax.tree_util.tree_leaves(params)) == len(jax.tree_util.tree_leaves(plain))


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: TimeEmbedding(8, n_frequencies=7, key=jax.random.key(config.seed(0))),
            "n_frequencies",
        ),
        (lambda: ScoreMLP(0, key=jax.random.key(config.seed(0))), "dim"),
        (lambda: ScoreMLP(2, hidden=(), key=jax.random.key(config.seed(0))), "hidden"),
        (lambda: ScoreConvNet(channels=6, groups=4, key=jax.random.key(config.seed(0))), "groups"),
        (
            lambda: ScoreMLP(2, key=jax.random.key(config.seed(0)), data_std=-1.0, process=PROCESS),
            "data_std",
        ),
        (
            lambda: ScoreMLP(2, key=jax.random.key(config.seed(0)), data_std=1.0),
            "process is required",
        ),
        (
            lambda: EnergyMLP(2, key=jax.random.key(config.seed(0)), noise_scaled=True),
            "process is required",
        ),
    ],
)
def test_network_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_networks_reject_batches():
    with pytest.raises(ValueError, match="vmap"):
        tiny_mlp()(jnp.ones((4, 2)), 0.5)
    conv = ScoreConvNet(channels=4, n_blocks=0, groups=2, key=jax.random.key(config.seed(0)))
    with pytest.raises(ValueError, match="vmap"):
        conv(jnp.ones((8, 8)), 0.5)


# -- the step ------------------------------------------------------------------------------------


def test_ema_update_rule():
    ema, params = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    for k, decay in [(0, 0.999), (5, 0.999), (10_000, 0.999), (3, 0.2)]:
        rho = min(decay, (1 + k) / (10 + k))
        out = ema_update(ema, params, jnp.asarray(k), decay)
        np.testing.assert_allclose(out["w"], rho * np.ones(3), rtol=1e-6)


def test_ema_warm_up_forgets_the_initial_weights_and_is_float32_safe():
    """Why the warm-up: with decay 0.999 a plain EMA still holds 82% of the random initial weights
    after 200 steps, the warmed-up one under 5%. And why not an Adam-style bias correction: with a
    decay that rounds to 1 in float32, optax's 1 - decay^k is exactly 0 (division by zero), while
    the warm-up stays finite."""
    init, params = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}

    def run(update):
        return jax.lax.fori_loop(0, 200, lambda k, e: update(e, k), init)["w"][0]

    warm = run(lambda e, k: ema_update(e, params, k, 0.999))
    plain = run(lambda e, k: optax.incremental_update(params, e, 1 - 0.999))
    assert float(warm) < 0.05 and float(plain) > 0.8
    decay = np.float32(1 - 1e-9)
    assert decay == 1.0
    bias_corrected = optax.tree_utils.tree_bias_correction({"w": jnp.ones(3)}, decay, 5)
    assert not np.all(np.isfinite(bias_corrected["w"]))
    assert np.all(np.isfinite(ema_update(init, params, 5, decay)["w"]))


@pytest.mark.statistical
def test_train_step_is_pure_and_learns(data):
    model = tiny_mlp()
    opt = make_optimizer(1e-2, 200, warmup_steps=10)
    params, static = split(model)
    state = train.init(params, opt)
    assert isinstance(state, TrainState) and int(state.step) == 0
    np.testing.assert_array_equal(flat(state.ema_params), flat(state.params))
    step = jax.jit(make_step(DSM, opt, static=static, batch_size=32, ema_decay=0.9))
    key = jax.random.key(config.seed(3))
    s1, i1 = step(key, state, data)
    s1b, i1b = step(key, state, data)
    assert float(i1["loss"]) == float(i1b["loss"])
    np.testing.assert_array_equal(flat(s1.params), flat(s1b.params))
    assert int(s1.step) == 1
    # the EMA moved by (1 - rho_0) = 0.9 of the way towards the new weights
    np.testing.assert_allclose(
        flat(s1.ema_params), 0.1 * flat(state.params) + 0.9 * flat(s1.params), rtol=1e-5, atol=1e-7
    )
    chunk = make_chunk(make_step(DSM, opt, static=static, batch_size=64), 200)
    _, infos = chunk(key, state, data)
    losses = np.asarray(infos["loss"])
    # late / early loss, measured over 10 seed offsets: median 0.44, range [0.41, 0.48];
    # threshold 0.9
    assert np.mean(losses[-50:]) < 0.9 * np.mean(losses[:20])


def test_chunking_does_not_change_the_keys(data):
    model = tiny_mlp()
    opt = make_optimizer(1e-2, 20)
    params, static = split(model)
    state = train.init(params, opt)
    step = make_step(DSM, opt, static=static, batch_size=16)
    key = jax.random.key(config.seed(4))
    whole, i_whole = make_chunk(step, 6)(key, state, data)
    half = make_chunk(step, 3)
    s, i_a = half(key, state, data)
    s, i_b = half(key, s, data)
    np.testing.assert_allclose(
        np.concatenate([i_a["loss"], i_b["loss"]]), i_whole["loss"], rtol=1e-6
    )
    np.testing.assert_allclose(flat(s.params), flat(whole.params), rtol=1e-6, atol=1e-7)


def test_any_loss_any_pytree_and_extra_gradients():
    """A least-squares loss on a plain pytree, with an extra gradient handed to the optimiser."""
    x = jax.random.normal(jax.random.key(config.seed(0)), (64, 3))
    data = {"x": x, "y": x @ jnp.array([1.0, -2.0, 0.5])}

    def loss(params, key, batch):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    def penalty(params, key, batch):
        return jnp.sum(params["w"] ** 2)

    seen = []

    def update_fn(updates, state, params=None, *, penalty_grad):
        seen.append(jax.tree_util.tree_structure(penalty_grad))
        return jax.tree_util.tree_map(lambda g: -0.1 * g, updates), state

    tx = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_fn)
    step = make_step(loss, tx, batch_size=8, ema_decay=None, extra_grads={"penalty_grad": penalty})
    state = train.init({"w": jnp.zeros(3)}, tx, ema=False)
    state, infos = train.run_steps(step, jax.random.key(config.seed(1)), state, data, 300)
    np.testing.assert_allclose(state.params["w"], [1.0, -2.0, 0.5], atol=1e-2)
    assert state.ema_params is None and set(infos) == {"loss", "penalty_grad"}
    # the extra gradient reached the update, with the parameters' structure
    assert seen == [jax.tree_util.tree_structure(state.params)]
    np.testing.assert_allclose(infos["penalty_grad"][-1], 1.0 + 4.0 + 0.25, rtol=1e-2)


def test_loss_with_aux_and_vmapped_runs():
    """A loss that returns ``(value, aux)``; several runs with their own hyperparameter, vmapped."""
    x = jax.random.normal(jax.random.key(0), (64, 3))
    data = {"x": x, "y": x @ jnp.array([1.0, -2.0, 0.5])}
    tx = optax.sgd(0.1)

    def run(key, scale):
        def loss(params, k, batch):
            r = batch["x"] @ params["w"] - scale * batch["y"]
            return jnp.mean(r**2), {"max_residual": jnp.max(jnp.abs(r))}

        step = make_step(loss, tx, batch_size=8, ema_decay=None, has_aux=True)
        state = train.init({"w": jnp.zeros(3)}, tx, ema=False)
        return train.run_steps(step, key, state, data, 200)

    keys = jax.random.split(jax.random.key(1), 2)
    states, infos = jax.jit(jax.vmap(run))(keys, jnp.array([1.0, 2.0]))
    assert set(infos) == {"loss", "aux"} and infos["aux"]["max_residual"].shape == (2, 200)
    np.testing.assert_allclose(states.params["w"][1], [2.0, -4.0, 1.0], atol=1e-2)
    # each vmapped run is the run alone
    alone, alone_infos = jax.jit(run)(keys[0], 1.0)
    np.testing.assert_allclose(states.params["w"][0], alone.params["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        infos["aux"]["max_residual"][0], alone_infos["aux"]["max_residual"], rtol=1e-5
    )


def test_sphere_mlp():
    net = SphereMLP(5, 3, width=16, depth=2, key=jax.random.key(0))
    z = jax.vmap(net)(jax.random.normal(jax.random.key(1), (10, 5)))
    assert z.shape == (10, 3) and net.out_size == 3
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="vmap over a batch"):
        net(jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="out_size"):
        SphereMLP(5, 0, key=jax.random.key(0))


# -- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": (np.int32(3) * np.ones(2, np.int32),)}
    path = save_checkpoint(tmp_path / "sub" / "c.ckpt", tree, {"note": "hi", "n": 3})
    out, meta = load_checkpoint(path, {"a": jnp.zeros((2, 3)), "b": (np.zeros(2, np.int32),)})
    np.testing.assert_array_equal(out["a"], tree["a"])
    np.testing.assert_array_equal(out["b"][0], tree["b"][0])
    assert meta == {"note": "hi", "n": 3} == read_checkpoint_metadata(path)
    assert [p.name for p in path.parent.iterdir()] == ["c.ckpt"]  # no temporary file left
    # no pickle: the payload is a sequence of .npy records
    assert b"\x93NUMPY" in path.read_bytes()


def _bad_files(path: Path):
    raw = path.read_bytes()
    yield "truncated", raw[: len(raw) - 7]
    yield "header cut", raw[:14]
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    yield "flipped byte", bytes(flipped)
    yield "not a checkpoint", b"hello world, not a checkpoint"
    yield "empty", b""


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    like = {"w": jnp.zeros((4, 4))}
    path = save_checkpoint(tmp_path / "c.ckpt", {"w": jnp.ones((4, 4))})
    good = path.read_bytes()
    for why, content in _bad_files(path):
        path.write_bytes(content)
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            load_checkpoint(path, like)
        assert issubclass(CorruptCheckpointError, ValueError), why
    path.write_bytes(good)
    with pytest.raises(CheckpointMismatchError, match="leaf 0"):
        load_checkpoint(path, {"w": jnp.zeros((4, 5))})
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt", like)


def test_failed_save_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.ckpt", {"w": jnp.ones(3)}, {"v": 1})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, {"w": jnp.zeros(3)}, {"v": object()})
    out, meta = load_checkpoint(path, {"w": jnp.zeros(3)})
    assert meta == {"v": 1} and np.all(np.asarray(out["w"]) == 1)
    assert len(list(tmp_path.iterdir())) == 1


# -- fit and resume -------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_fit_resumes_bit_for_bit(tmp_path, data):
    kwargs = dict(n_steps=30, batch_size=32, learning_rate=5e-3, chunk_size=10, ema_decay=0.99)
    key = jax.random.key(config.seed(7))
    full = fit(key, tiny_mlp(), data, DSM, **kwargs)
    assert full.losses.shape == (30,) and np.all(np.isfinite(full.losses))

    ckpt = tmp_path / "run.ckpt"
    seen = []

    def interrupt_after_two(step, loss):
        seen.append((step, loss))
        if step == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(
            key, tiny_mlp(), data, DSM, checkpoint_path=ckpt, callback=interrupt_after_two, **kwargs
        )
    assert [s for s, _ in seen] == [10, 20]
    assert read_checkpoint_metadata(ckpt)["step"] == 20
    resumed = fit(key, tiny_mlp(), data, DSM, checkpoint_path=ckpt, **kwargs)
    np.testing.assert_array_equal(flat(resumed.state.params), flat(full.state.params))
    np.testing.assert_array_equal(flat(resumed.state.ema_params), flat(full.state.ema_params))
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert int(resumed.state.step) == 30
    # the EMA model differs from the last weights and both are usable modules
    assert not np.array_equal(flat(split(resumed.ema_model)[0]), flat(split(resumed.model)[0]))
    assert resumed.ema_model(jnp.zeros(2), 0.5).shape == (2,)

    # a finished checkpoint returns at once with the same weights
    again = fit(key, tiny_mlp(), data, DSM, checkpoint_path=ckpt, **kwargs)
    np.testing.assert_array_equal(flat(again.state.params), flat(full.state.params))
    # a checkpoint of another run (key, or the loss's process) is refused
    with pytest.raises(CheckpointMismatchError, match="different training run"):
        fit(jax.random.key(config.seed(8)), tiny_mlp(), data, DSM, checkpoint_path=ckpt, **kwargs)
    other_loss = jax.tree_util.Partial(dsm_loss, process=LinearVP(0.2, 10.0))
    with pytest.raises(CheckpointMismatchError, match="different training run"):
        fit(key, tiny_mlp(), data, other_loss, checkpoint_path=ckpt, **kwargs)
    # a damaged one names the file
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError, match="run.ckpt"):
        fit(key, tiny_mlp(), data, DSM, checkpoint_path=ckpt, **kwargs)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(data=np.ones(5, np.float32)), ValueError, "x0 must have shape"),
        (dict(data=np.full((8, 2), np.nan, np.float32)), ValueError, "NaN"),
        (dict(data=np.ones((0, 2), np.float32)), ValueError, "leading axis"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (
            dict(loss=jax.tree_util.Partial(dsm_loss, process=PROCESS, weighting="l1")),
            ValueError,
            "weighting",
        ),
        (dict(loss=lambda m, k, b: jnp.ones(2)), ValueError, "scalar"),
        (dict(loss="dsm"), TypeError, "loss"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(data=np.ones((8, 3), np.float32)), ValueError, "shape"),
        (dict(mesh="cpu"), TypeError, "mesh"),
        (dict(callback=3), TypeError, "callback"),
    ],
)
def test_fit_bad_arguments(data, change, exc, match):
    kwargs = dict(n_steps=5, batch_size=8)
    args = {"data": data, "loss": DSM}
    for k in list(change):
        (args if k in args else kwargs)[k] = change[k]
    with pytest.raises(exc, match=match):
        fit(jax.random.key(config.seed(0)), tiny_mlp(), args["data"], args["loss"], **kwargs)


def test_mesh_on_one_device(data):
    mesh = data_parallel_mesh()
    assert mesh.axis_names == ("data",)
    res = fit(
        jax.random.key(config.seed(0)),
        tiny_mlp(),
        data,
        DSM,
        n_steps=4,
        batch_size=8,
        chunk_size=4,
        mesh=mesh,
    )
    assert np.all(np.isfinite(res.losses))
    # any optax optimiser can replace the default one
    sgd = fit(
        jax.random.key(config.seed(0)),
        tiny_mlp(),
        data,
        DSM,
        n_steps=4,
        batch_size=8,
        optimizer=optax.sgd(1e-2),
    )
    assert np.all(np.isfinite(sgd.losses)) and int(sgd.state.step) == 4
    with pytest.raises(ValueError, match="at least one device"):
        data_parallel_mesh([])


def test_sharded_step_matches_one_device(run_on_four_devices):
    """One step (and one 5-step chunk) on a 4-device CPU mesh equals the one-device step."""
    out = run_on_four_devices("_sharded_step.py")
    assert abs(out["loss_1"] - out["loss_4"]) <= 1e-6 * max(1.0, abs(out["loss_1"]))
    assert out["params_max_abs_change"] > 1e-3  # the step did move the weights
    assert out["params_max_abs_diff"] < 1e-6
    assert out["ema_max_abs_diff"] < 1e-6
    assert out["params_devices_4"] == 4  # parameters replicated on the four devices
    assert out["batch_devices"] == 4 and out["batch_shard_shapes"] == [[16, 3]]
    assert out["has_all_reduce"]  # gradients summed across devices
    assert out["chunk_loss_max_abs_diff"] < 1e-5 and out["chunk_params_max_abs_diff"] < 1e-5
    assert "multiple of the number of devices" in out["bad_batch_error"]


def test_fit_loops_over_compiled_steps_for_conv_nets_on_the_cpu(data):
    # On the CPU a convolutional loss is trained by a loop over one compiled step (XLA's while
    # loop runs a convolution's gradient several times slower; benchmarks/bench_train.py), every
    # other loss by one lax.scan per chunk. Both give the weights of run_steps, to float32
    # round-off, and the same keys.
    images = jax.random.uniform(jax.random.key(config.seed(3)), (64, 16))
    conv = UNet(side=4, channels=(8, 8), n_middle=0, embed_dim=8, groups=4, key=jax.random.key(1))
    cosine = jax.tree_util.Partial(dsm_loss, process=CosineVP())
    key = jax.random.key(config.seed(9))
    params, static = split(conv)
    spec = train._ChunkSpec(6, 6, 5e-3, None, 16, 0.99, None)
    state = train.init(params, make_optimizer(5e-3, 6))
    assert train._scan_is_slow(key, state, images, cosine, static, spec)
    mlp_params, mlp_static = split(tiny_mlp())
    mlp_state = train.init(mlp_params, make_optimizer(5e-3, 6))
    assert not train._scan_is_slow(key, mlp_state, data, DSM, mlp_static, spec)

    looped = fit(key, conv, images, cosine, n_steps=6, chunk_size=4, batch_size=16,
                 learning_rate=5e-3, ema_decay=0.99)  # fmt: skip
    step = make_step(cosine, make_optimizer(5e-3, 6), static=static, batch_size=16, ema_decay=0.99)
    scanned, infos = jax.jit(lambda s: train.run_steps(step, key, s, images, 6))(state)
    np.testing.assert_allclose(looped.losses, np.asarray(infos["loss"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(flat(looped.state.params), flat(scanned.params), atol=1e-5)
    np.testing.assert_allclose(flat(looped.state.ema_params), flat(scanned.ema_params), atol=1e-5)
    assert int(looped.state.step) == 6
