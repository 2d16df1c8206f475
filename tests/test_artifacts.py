"""Tests of otdiff.artifacts, the one cache of trained artifacts: fingerprints, the user cache,
shipped files (used when they match, skipped with a warning when stale or damaged, never
modified), shipping and planning; and that the files shipped in the package match the current
recipes (else: run `make zoo`)."""

from __future__ import annotations

import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import artifacts, checkpoint, train, zoo

BUILDS = {"n": 0}


def build_tree(scale: float):
    """A build function: a small pytree of arrays, counting its calls."""

    def build(progress):
        BUILDS["n"] += 1
        w = scale * jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4) + 1e-4
        return {"w": w, "steps": jnp.arange(3, dtype=jnp.int32)}, {"note": "test"}

    return build


LIKE = {
    "w": jax.ShapeDtypeStruct((3, 4), jnp.float32),
    "steps": jax.ShapeDtypeStruct((3,), jnp.int32),
}


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(artifacts.SHIPPED_DIR_VAR, str(tmp_path / "shipped"))
    artifacts.forget()
    BUILDS["n"] = 0
    yield tmp_path
    artifacts.forget()


def get(inputs=None, **kwargs):
    inputs = {"scale": 2.0} if inputs is None else inputs
    kwargs.setdefault("verbose", False)
    return artifacts.cached("thing", 1, inputs, build=build_tree(2.0), like=LIKE, **kwargs)


# -- fingerprints ---------------------------------------------------------------------------------


def f_one(x):
    """A docstring."""
    return x + 1  # a comment


def f_one_reworded(x):
    """Another docstring, and the formatting differs."""
    return (x
            + 1)  # fmt: skip


def f_two(x):
    return x + 2


class Settings(NamedTuple):
    width: int
    rate: float


def test_fingerprint_sees_settings_arrays_and_code_not_docstrings():
    fp = artifacts.fingerprint
    assert fp({"a": 1, "b": [1, 2]}) == fp({"b": [1, 2], "a": 1})
    assert fp({"a": 1}) != fp({"a": 2})
    assert fp(Settings(3, 0.1)) == fp(Settings(3, 0.1)) != fp(Settings(3, 0.2))
    assert fp(np.zeros(3)) != fp(np.zeros(4)) and fp(np.zeros(3)) != fp(np.ones(3))
    assert fp(np.zeros(3, np.float32)) != fp(np.zeros(3, np.float64))
    # code by its syntax: docstrings, comments, formatting and the name of the function ignored
    one, reworded = fp([f_one]), fp([f_one_reworded])
    assert one != fp([f_two])
    assert fp(f_one) == fp(f_one)
    assert (
        artifacts._code_digest(f_one).split("\n", 1)[1]
        == (artifacts._code_digest(f_one_reworded).split("\n", 1)[1])
    )
    assert isinstance(reworded, str) and len(one) == 12
    assert fp(jax.tree_util.Partial(f_one, 3)) != fp(jax.tree_util.Partial(f_one, 4))
    assert fp(jax.jit(f_one)) == fp(f_one) and fp(eqx.filter_jit(f_one)) == fp(f_one)
    with pytest.raises(TypeError, match="stable description"):
        fp({"obj": object()})


# -- the user cache -------------------------------------------------------------------------------


def test_built_once_then_read_from_the_cache(folders):
    first = get()
    assert first.source == "built" and BUILDS["n"] == 1
    assert first.path.parent == folders / "cache" / "zoo"
    assert first.path.name == f"thing-seed1-{artifacts.fingerprint({'scale': 2.0})}.ckpt"
    assert first.meta["note"] == "test" and first.meta["build_seconds"] >= 0
    assert get().source == "cache" and BUILDS["n"] == 1  # from memory
    artifacts.forget()
    again = get()
    assert again.source == "cache" and BUILDS["n"] == 1  # from the file
    np.testing.assert_array_equal(again.tree["w"], first.tree["w"])
    assert again.tree["steps"].dtype == jnp.int32
    assert get({"scale": 3.0}).source == "built" and BUILDS["n"] == 2  # other inputs: other file
    assert get(retrain=True).source == "built" and BUILDS["n"] == 3


def test_damaged_cache_file_is_rebuilt_with_a_warning():
    path = get().path
    path.write_bytes(path.read_bytes()[:40])
    artifacts.forget()
    with pytest.warns(UserWarning, match="Rebuilding"):
        art = get()
    assert art.source == "built" and BUILDS["n"] == 2
    checkpoint.read_metadata(path)  # sound again


def test_a_damaged_progress_file_restarts_the_build():
    calls = []

    def build(progress):
        calls.append(progress)
        if len(calls) == 1:
            raise checkpoint.CorruptCheckpointError("the progress file is corrupt.")
        return build_tree(2.0)(progress)

    with pytest.warns(UserWarning, match="from scratch"):
        art = artifacts.cached("thing", 1, {}, build=build, like=LIKE, verbose=False)
    assert art.source == "built" and len(calls) == 2 and calls[0].name.endswith(".train.ckpt")


def test_find_reads_but_never_builds(folders):
    assert artifacts.find("thing", 1, {"scale": 2.0}, like=LIKE) is None
    built = get()
    artifacts.forget()
    found = artifacts.find("thing", 1, {"scale": 2.0}, like=LIKE)
    assert found.source == "cache" and BUILDS["n"] == 1
    np.testing.assert_array_equal(found.tree["w"], built.tree["w"])
    assert artifacts.find("thing", 2, {"scale": 2.0}, like=LIKE) is None
    with artifacts.shipping(folders / "elsewhere"):
        assert artifacts.find("thing", 1, {"scale": 2.0}, like=LIKE) is None
    assert BUILDS["n"] == 1


def test_bad_arguments():
    ok = {"build": build_tree(1.0), "like": LIKE}
    with pytest.raises(ValueError, match="name"):
        artifacts.cached("a/b", 0, {}, **ok)
    with pytest.raises(ValueError, match="seed"):
        artifacts.cached("a", -1, {}, **ok)
    with pytest.raises(ValueError, match="storage_dtype"):
        artifacts.cached("a", 0, {}, storage_dtype="int8", **ok)
    with pytest.raises(TypeError, match="build"):
        artifacts.cached("a", 0, {}, build=None, like=LIKE)
    with pytest.raises(TypeError, match="metadata"):
        artifacts.cached("a", 0, {}, build=lambda p: {"w": 1}, like=LIKE, verbose=False)


# -- shipped files --------------------------------------------------------------------------------


def test_shipping_then_loading_the_shipped_file(folders):
    with artifacts.shipping() as written:
        built = get(storage_dtype="float16")
    (path,) = written
    assert path == artifacts.shipped_path("thing", 1) and path.parent == folders / "shipped"
    assert checkpoint.read_metadata(path)["storage_dtype"] == "float16"
    artifacts.forget()
    for f in (folders / "cache" / "zoo").glob("*.ckpt"):
        f.unlink()  # an empty user cache: the shipped file is all there is
    n = BUILDS["n"]
    t0 = time.perf_counter()
    art = get(storage_dtype="float16")
    assert time.perf_counter() - t0 < 1.0
    assert art.source == "shipped" and BUILDS["n"] == n and art.path == path
    assert art.tree["w"].dtype == jnp.float32 and art.tree["steps"].dtype == jnp.int32
    np.testing.assert_allclose(art.tree["w"], built.tree["w"], rtol=1e-3)
    np.testing.assert_array_equal(art.tree["steps"], built.tree["steps"])
    assert not list((folders / "cache" / "zoo").glob("*.ckpt"))  # nothing copied


def test_ship_keeps_only_the_planned_files_not_what_they_were_built_from(folders, monkeypatch):
    def student():  # an artifact whose build needs another one (a student and its pairs)
        def build(progress):
            pairs = artifacts.cached(
                "pairs", 3, {}, build=build_tree(1.0), like=LIKE, verbose=False
            )
            return {"w": 2 * pairs.tree["w"], "steps": pairs.tree["steps"]}, {}

        return artifacts.cached("student", 0, {"v": 1}, build=build, like=LIKE, verbose=False)

    monkeypatch.setitem(zoo.SHIPPED, "toy", student)
    written = zoo.ship(["toy"])
    assert written == [artifacts.shipped_path("student", 0)]
    assert sorted(p.name for p in (folders / "shipped").iterdir()) == ["student-seed0.ckpt"]
    assert [state for _, state in zoo.shipped_status(["toy"])] == ["ok"]


def test_one_shipping_run_builds_a_shared_model_once(folders, monkeypatch):
    def teacher():
        return artifacts.cached("teacher", 0, {}, build=build_tree(1.0), like=LIKE, verbose=False)

    def student():  # trained from the teacher, which is shipped too
        def build(progress):
            return {"w": 2 * teacher().tree["w"], "steps": jnp.arange(3, dtype=jnp.int32)}, {}

        return artifacts.cached("student", 0, {}, build=build, like=LIKE, verbose=False)

    monkeypatch.setitem(zoo.SHIPPED, "toy_teacher", teacher)
    monkeypatch.setitem(zoo.SHIPPED, "toy_student", student)
    written = zoo.ship(["toy_teacher", "toy_student"])
    assert BUILDS["n"] == 1  # the teacher, once; the student's build is not build_tree's
    assert [p.name for p in written] == ["teacher-seed0.ckpt", "student-seed0.ckpt"]
    zoo.ship(["toy_student"])  # a run of its own builds the teacher afresh
    assert BUILDS["n"] == 2


@pytest.mark.parametrize("damage", ["stale", "truncated", "garbage"])
def test_a_stale_or_damaged_shipped_file_is_skipped_with_a_warning(folders, damage):
    with artifacts.shipping():
        get()
    for f in (folders / "cache" / "zoo").glob("*.ckpt"):
        f.unlink()
    path = artifacts.shipped_path("thing", 1)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    before = path.read_bytes()
    artifacts.forget()
    n = BUILDS["n"]
    inputs = {"scale": 2.5} if damage == "stale" else None
    with pytest.warns(artifacts.ShippedArtifactWarning, match="make zoo"):
        art = get(inputs)
    assert art.source == "built" and BUILDS["n"] == n + 1
    assert path.read_bytes() == before  # left as it is
    artifacts.forget()
    with pytest.warns(artifacts.ShippedArtifactWarning):
        assert get(inputs).source == "cache"  # the rebuilt copy is kept in the user cache


def test_planning_reads_and_builds_nothing():
    with artifacts.planning() as plan:
        art = get(storage_dtype="float16")
    assert BUILDS["n"] == 0 and art.source == "planned"
    assert art.tree["w"].shape == (3, 4) and float(jnp.abs(art.tree["w"]).sum()) == 0.0
    (entry,) = plan
    assert entry == artifacts.PlannedArtifact(
        "thing", 1, artifacts.fingerprint({"scale": 2.0}), "float16"
    )


# -- the files shipped with the package -----------------------------------------------------------


def test_every_shipped_file_matches_its_recipe(monkeypatch):
    monkeypatch.delenv(artifacts.SHIPPED_DIR_VAR)
    status = zoo.shipped_status()
    assert {entry.name for entry, _ in status} >= {"ring8", "digits_unet"}
    bad = [f"{entry.name}-seed{entry.seed}: {state}" for entry, state in status if state != "ok"]
    assert not bad, (
        f"shipped files out of date ({', '.join(bad)}): a recipe changed; run `make zoo` to "
        "retrain and rewrite them (lib/otdiff/zoo_weights/)."
    )
    # each file once: a model another artifact stands on (the digits teacher of the ReFlow
    # students) is planned by both
    files = {artifacts.shipped_path(e.name, e.seed) for e, _ in status}
    total = sum(path.stat().st_size for path in files)
    assert total < 17e6  # about 14.1 MB in all: every demo chapter's trained artifacts


@pytest.mark.parametrize("name", ["ring8", "digits_unet"])
def test_shipped_models_load_without_training(monkeypatch, name):
    monkeypatch.delenv(artifacts.SHIPPED_DIR_VAR)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained a shipped model"))
    zoo.load(name, verbose=False)  # compiles nothing; warms the imports
    artifacts.forget()
    t0 = time.perf_counter()
    model = zoo.load(name, verbose=False)
    seconds = time.perf_counter() - t0
    assert model.info["source"] == "shipped" and not model.info["trained_now"]
    assert seconds < 1.0, f"loading the shipped {name!r} took {seconds:.2f} s"
    x = jnp.zeros(zoo.recipe(name).make_data(0).shape[1])
    # jitted: an eager call of the digits U-Net dispatches every operation on its own
    assert np.all(np.isfinite(eqx.filter_jit(model.score)(x, jnp.float32(0.5))))


def test_the_composition_chapter_models_are_shipped(monkeypatch):
    monkeypatch.delenv(artifacts.SHIPPED_DIR_VAR)
    monkeypatch.delenv("OTDIFF_SEED_OFFSET", raising=False)  # the shipped seeds
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained a shipped model"))
    models = zoo.chapter_slots_models(scale="demo", verbose=False)
    assert set(models) == {"slots_local", "slots_mlp"}
    for runs in models.values():
        assert [m.info["seed"] for m in runs] == [0, 1, 2]
        assert all(m.info["source"] == "shipped" for m in runs)
