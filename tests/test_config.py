"""Scale presets, the cache folder and the notebook set-up."""

import random
import re
from pathlib import Path

import jax
import matplotlib as mpl
import numpy as np
import pytest

from otdiff import config


def test_default_preset_follows_the_device(monkeypatch):
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    expected = "demo" if jax.default_backend() == "cpu" else "full"
    assert config.active_scale() == expected


@pytest.mark.parametrize("value", ["demo", "full", "FULL", " demo "])
def test_environment_variable_overrides(monkeypatch, value):
    monkeypatch.setenv(config.ENV_VAR, value)
    assert config.active_scale() == value.strip().lower()


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "huge")
    with pytest.raises(ValueError, match="OTDIFF_SCALE.*demo, full"):
        config.active_scale()


def test_choose(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "full")
    assert config.choose(demo=1, full=2) == 2
    assert config.choose(demo=1, full=2, scale="demo") == 1
    with pytest.raises(ValueError, match="scale must be one of"):
        config.choose(demo=1, full=2, scale="medium")


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    assert config.cache_dir() == tmp_path
    monkeypatch.delenv("OTDIFF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.cache_dir() == tmp_path / "xdg" / "otdiff"


def test_setup_notebook_seeds_styles_and_reports(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(config.ENV_VAR, "demo")
    with mpl.rc_context():
        assert config.setup_notebook(seed=3) == "demo"
        first = (random.random(), np.random.rand())  # noqa: NPY002
        config.setup_notebook(seed=3, quiet=True)
        assert (random.random(), np.random.rand()) == first  # noqa: NPY002
        assert mpl.rcParams["axes.spines.top"] is False
    banner = capsys.readouterr().out.strip().splitlines()
    assert len(banner) == 1 and "preset 'demo'" in banner[0] and jax.__version__ in banner[0]
    assert (tmp_path / "jax").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_setup_notebook_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        config.setup_notebook(seed=seed, quiet=True, compilation_cache=False)


def test_seed_offset_shifts_every_seed(monkeypatch):
    monkeypatch.delenv("OTDIFF_SEED_OFFSET", raising=False)
    assert config.seed_offset() == 0 and config.seed(3) == 3
    monkeypatch.setenv("OTDIFF_SEED_OFFSET", "4")
    assert config.seed(3) == 7
    assert config.seeds(3, start=1) == [5, 6, 7]
    for bad in ("-1", "two", "1.5"):
        monkeypatch.setenv("OTDIFF_SEED_OFFSET", bad)
        with pytest.raises(ValueError, match="OTDIFF_SEED_OFFSET"):
            config.seed(0)
    monkeypatch.setenv("OTDIFF_SEED_OFFSET", "0")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="base"):
            config.seed(bad)
    with pytest.raises(ValueError, match="n must"):
        config.seeds(0)


def test_benchmark_results_reads_the_projects_record_from_any_subfolder(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "toy.json").write_text('{"rows": [1, 2]}')
    (tmp_path / "book" / "ot").mkdir(parents=True)
    assert config.benchmark_results("toy", start=tmp_path / "book" / "ot") == {"rows": [1, 2]}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        config.benchmark_results("missing", start=tmp_path)
    with pytest.raises(ValueError, match="name"):
        config.benchmark_results("toy.json", start=tmp_path)


def test_benchmark_results_outside_the_project_says_where_the_records_live(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks"):
        config.benchmark_results("reflow", start=tmp_path)


def test_every_record_a_chapter_quotes_is_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    names = {
        name
        for path in (root / "book").rglob("*.ipynb")
        for name in re.findall(r'benchmark_results\(\\"(\w+)\\"\)', path.read_text())
    }
    assert len(names) >= 8  # the chapters quote their benchmarks through this one function
    for name in sorted(names):
        assert isinstance(config.benchmark_results(name, start=root / "book"), dict)
