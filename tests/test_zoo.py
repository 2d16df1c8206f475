"""Tests of otdiff.zoo on tiny recipes in a temporary cache: train once, cache, determinism,
corruption, resume after an interruption, concurrent requests, registry and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from otdiff import artifacts, config, zoo
from otdiff.checkpoint import read_metadata as read_checkpoint_metadata
from otdiff.train import split

ROOT = Path(__file__).resolve().parents[1]
CALLS = {"data": 0}


def tiny_data(seed):
    CALLS["data"] += 1
    return np.asarray(jax.random.normal(jax.random.key(config.seed(seed)), (128, 2)) + 2.0)


def tiny_model(key, process):
    from otdiff.diffusion import ScoreMLP

    return ScoreMLP(2, hidden=(8, 8), embed_dim=8, key=key, data_std=1.0, process=process)


def tiny_process():
    from otdiff.diffusion import LinearVP

    return LinearVP()


def tiny_loss(process):
    from otdiff.diffusion import dsm_loss

    return jax.tree_util.Partial(dsm_loss, process=process)


TINY = zoo.Recipe(
    name="tiny_test",
    make_data=tiny_data,
    make_model=tiny_model,
    make_loss=tiny_loss,
    make_process=tiny_process,
    n_steps=20,
    batch_size=16,
    chunk_size=10,
    description="a tiny test recipe",
)


def flat(module):
    return np.asarray(ravel_pytree(split(module)[0])[0])


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(artifacts.SHIPPED_DIR_VAR, str(tmp_path / "shipped"))
    artifacts.forget()
    yield tmp_path / "zoo"
    artifacts.forget()


def test_registry_and_errors():
    assert {"ring8", "digits"} <= set(zoo.available())
    assert zoo.recipe("ring8").n_steps > 0 and zoo.recipe("digits").parameterisation == "eps"
    with pytest.raises(ValueError, match="available"):
        zoo.load("no_such_model")
    with pytest.raises(TypeError, match="name"):
        zoo.load(3)
    with pytest.raises(ValueError, match="seed"):
        zoo.load(TINY, seed=-1)
    with pytest.raises(ValueError, match="exists"):
        zoo.register(zoo.Recipe(**{**TINY.__dict__, "name": "ring8"}))
    with pytest.raises(ValueError, match="name"):
        zoo.Recipe(**{**TINY.__dict__, "name": "bad/name"})
    with pytest.raises(ValueError, match="n_steps"):
        zoo.Recipe(**{**TINY.__dict__, "n_steps": 0})
    with pytest.raises(TypeError, match="Recipe"):
        zoo.register("ring8")
    with pytest.raises(ValueError, match="parameterisation"):
        zoo.Recipe(**{**TINY.__dict__, "parameterisation": "velocity_and_more"})
    with pytest.raises(TypeError, match="make_loss"):
        zoo.Recipe(**{**TINY.__dict__, "make_loss": None})


def test_recipe_hash_changes_with_the_recipe():
    h = TINY.fingerprint()
    assert h == zoo.Recipe(**TINY.__dict__).fingerprint()
    assert h != zoo.Recipe(**{**TINY.__dict__, "n_steps": 21}).fingerprint()
    assert h != zoo.Recipe(**{**TINY.__dict__, "make_model": lambda key, p: None}).fingerprint()
    assert h != zoo.Recipe(**{**TINY.__dict__, "make_loss": lambda p: None}).fingerprint()
    assert h == zoo.Recipe(**{**TINY.__dict__, "description": "other words"}).fingerprint()


def test_trains_once_then_loads_from_cache(tmp_cache, capsys):
    first = zoo.load(TINY, seed=3)
    out = capsys.readouterr()
    assert first.info["trained_now"] and "training 'tiny_test'" in out.out
    assert "steps, " in out.out and ("expected" in out.out or "not known yet" in out.out)
    assert "100%" in out.err  # the progress bar, updated after every compiled chunk
    path = Path(first.info["path"])
    assert path.parent == tmp_cache and path.name.startswith("tiny_test-seed3-")
    assert not list(tmp_cache.glob("*.train.ckpt"))  # the resume checkpoint is gone once done
    artifacts.forget()
    n_data = CALLS["data"]
    second = zoo.load(TINY, seed=3)
    assert not second.info["trained_now"] and CALLS["data"] == n_data  # no retraining
    np.testing.assert_array_equal(flat(first.model), flat(second.model))
    assert second.info["name"] == "tiny_test" and second.info["seed"] == 3
    # a usable score on one point, consistent with the model
    x, t = jnp.array([1.0, -1.0]), 0.5
    np.testing.assert_allclose(
        second.score(x, t), -second.model(x, t) / second.process.sigma(t), rtol=1e-6
    )
    assert zoo.training_losses(TINY, seed=3).shape == (20,)


def test_deterministic_from_the_seed(tmp_cache, tmp_path):
    a = zoo.load(TINY, seed=1, verbose=False)
    b = zoo.load(TINY, seed=1, verbose=False, cache=tmp_path / "elsewhere")
    c = zoo.load(TINY, seed=2, verbose=False)
    np.testing.assert_array_equal(flat(a.model), flat(b.model))
    assert not np.array_equal(flat(a.model), flat(c.model))
    r = zoo.load(TINY, seed=1, verbose=False, retrain=True)
    assert r.info["trained_now"]
    np.testing.assert_array_equal(flat(a.model), flat(r.model))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_rebuilt_with_a_warning(tmp_cache, damage):
    good = zoo.load(TINY, verbose=False)
    path = Path(good.info["path"])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00" * 100)
    artifacts.forget()
    with pytest.warns(UserWarning, match="corrupt"):
        again = zoo.load(TINY, verbose=False)
    assert again.info["trained_now"]
    np.testing.assert_array_equal(flat(good.model), flat(again.model))
    read_checkpoint_metadata(path)  # sound again


def test_interrupted_training_resumes(tmp_cache, monkeypatch):
    reference = zoo.load(TINY, seed=5, verbose=False, cache=tmp_cache / "ref")
    from otdiff import train

    real_fit = train.fit

    def interrupted_fit(*args, **kwargs):
        def stop(step, loss):
            if step == 10:
                raise KeyboardInterrupt

        return real_fit(*args, **kwargs, callback=stop)

    monkeypatch.setattr(train, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        zoo.load(TINY, seed=5, verbose=False)
    (ckpt,) = tmp_cache.glob("*.train.ckpt")
    assert read_checkpoint_metadata(ckpt)["step"] == 10
    assert not list(tmp_cache.glob("tiny_test-seed5-*[0-9a-f].ckpt"))  # no final file yet
    monkeypatch.setattr(train, "fit", real_fit)
    resumed = zoo.load(TINY, seed=5, verbose=False)
    np.testing.assert_array_equal(flat(resumed.model), flat(reference.model))
    # a damaged resume checkpoint is dropped with a warning and training starts over
    zoo.clear("tiny_test")
    monkeypatch.setattr(train, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        zoo.load(TINY, seed=5, verbose=False)
    monkeypatch.setattr(train, "fit", real_fit)
    (ckpt,) = tmp_cache.glob("*.train.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    with pytest.warns(UserWarning, match="from scratch"):
        fresh = zoo.load(TINY, seed=5, verbose=False)
    np.testing.assert_array_equal(flat(fresh.model), flat(reference.model))


def test_concurrent_threads_train_once(tmp_cache):
    CALLS["data"] = 0
    results, errors = [], []

    def worker():
        try:
            results.append(zoo.load(TINY, seed=7, verbose=False))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert sum(r.info["trained_now"] for r in results) == 1
    assert CALLS["data"] == 1
    for r in results[1:]:
        np.testing.assert_array_equal(flat(r.model), flat(results[0].model))


SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_zoo import TINY, flat
from otdiff import zoo
m = zoo.load(TINY, seed=11, verbose=False)
print(json.dumps({{"trained": m.info["trained_now"], "sum": float(np.sum(flat(m.model)))}}))
"""


def test_concurrent_processes_train_once(tmp_cache):
    code = SCRIPT.format(tests=str(ROOT / "tests"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["trained"] for o in outs) == [False, True]
    assert outs[0]["sum"] == outs[1]["sum"]
    assert len(list(tmp_cache.glob("tiny_test-seed11-*.ckpt"))) == 1
    assert not list(tmp_cache.glob(".*tmp"))


def test_a_generic_recipe_without_a_process(tmp_cache):
    """Any model, loss and data: a regression on a pytree of data, cached like the others."""

    def data(seed):
        x = np.asarray(jax.random.normal(jax.random.key(config.seed(seed)), (64, 3)))
        return {"x": x, "y": x @ np.array([1.0, -1.0, 2.0])}

    def model(key, process):
        return {"w": jnp.zeros(3)}

    def loss(process):
        return lambda params, key, batch: jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    recipe = zoo.Recipe(
        name="tiny_regression", make_data=data, make_model=model, make_loss=loss, n_steps=200,
        batch_size=16, learning_rate=0.05, chunk_size=100, parameterisation="other",
    )  # fmt: skip
    trained = zoo.load(recipe, verbose=False)
    assert trained.process is None and trained.score is None
    np.testing.assert_allclose(trained.model["w"], [1.0, -1.0, 2.0], atol=0.05)
    again = zoo.load(recipe, verbose=False)
    assert not again.info["trained_now"]


def test_clear(tmp_cache):
    zoo.load(TINY, verbose=False)
    removed = zoo.clear("tiny_test")
    assert len(removed) == 1 and not list(tmp_cache.glob("*.ckpt"))
    assert zoo.clear("tiny_test") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zoo.load(TINY, verbose=False).info["trained_now"]
    assert zoo.clear() and zoo.clear() == []


@pytest.mark.parametrize("name", ["canvas", "canvas_full"])
def test_canvas_recipes_build_a_location_conditioned_network(name):
    from otdiff.data import canvas

    rec = zoo.recipe(name)
    x, c = rec.make_data(0)
    board = canvas(12, 3)
    assert x.shape == c.shape == (20_000, board.dim)
    null = np.all(np.asarray(c) == -1.0, axis=1)
    assert 0.08 < null.mean() < 0.12  # a tenth of the rows learn the unconditional law
    process = rec.process()

    def loss_of_a_fresh_model(key):
        model = rec.make_model(key, process)
        return model(x[0], 0.5, c[0]), rec.make_loss(process)(model, key, (x[:8], c[:8]))

    out, loss = eqx.filter_eval_shape(loss_of_a_fresh_model, jax.random.key(0))
    assert out.shape == (board.dim,) and loss.shape == ()


def test_chapter_canvas_model_is_seed_zero_at_every_offset(monkeypatch):
    monkeypatch.setenv(config.SEED_OFFSET_VAR, "3")
    with artifacts.planning() as plan:
        zoo.chapter_canvas_model(scale="demo")
        zoo.chapter_canvas_model(scale="full")
    assert [(p.name, p.seed) for p in plan] == [("canvas", 0), ("canvas_full", 0)]


def test_digits_unet_recipe_is_a_convolutional_noise_predictor_on_the_digits():
    from otdiff.diffusion import CosineVP
    from otdiff.nn import UNet

    rec = zoo.recipe("digits_unet")
    assert rec.parameterisation == "eps" and isinstance(rec.process(), CosineVP)
    assert rec.make_data(0).shape[1] == 64
    assert UNet in rec.code  # the network's code is part of the fingerprint
    process = rec.process()

    def loss_of_a_fresh_model(key):
        model = rec.make_model(key, process)
        return model(jnp.zeros(64), 0.5), rec.make_loss(process)(model, key, jnp.zeros((8, 64)))

    out, loss = eqx.filter_eval_shape(loss_of_a_fresh_model, jax.random.key(0))
    assert out.shape == (64,) and loss.shape == ()
