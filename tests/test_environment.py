"""The three descriptions of the environment agree: pyproject.toml, requirements.lock, environment.yml."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock() -> dict[str, list[tuple[Version, str]]]:
    """name -> [(version, marker)] from requirements.lock (uv's universal lock)."""
    pins: dict[str, list[tuple[Version, str]]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = list(req.specifier)
        assert spec.operator == "==", f"requirements.lock must pin exact versions: {line}"
        pins.setdefault(_norm(req.name), []).append((Version(spec.version), str(req.marker or "")))
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements():
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if _norm(r.name) != "otdiff"]


def test_lock_satisfies_every_declared_requirement():
    pins = _lock()
    env = default_environment() | {"python_version": "3.11", "python_full_version": "3.11.7"}
    for req in _requirements():
        name = _norm(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but missing from the lock"
        versions = [v for v, marker in pins[name] if not marker or _marker_ok(marker, env)]
        assert versions, f"no pin of {req.name} applies to Python 3.11"
        for v in versions:
            assert req.specifier.contains(v, prereleases=True), (
                f"requirements.lock pins {req.name}=={v}, outside pyproject's {req.specifier}: "
                "run `make lock`"
            )


def _marker_ok(marker: str, env) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate(env)


def test_environment_yml_installs_the_lock_and_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    python = next(d for d in conda if d.startswith("python"))
    version = python.split("=", 1)[1]
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert requires.contains(Version(version + ".0")), (
        f"{python} violates requires-python {requires}"
    )
    assert "-r requirements.lock" in pip, "environment.yml must install requirements.lock"
    assert "-e ." in pip, "environment.yml must install the otdiff package"


def test_lock_was_made_for_the_environment_python():
    header = (ROOT / "requirements.lock").read_text().splitlines()[:3]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert any(f"--python-version {python.split('=', 1)[1]}" in line for line in header)


def test_jupyter_book_is_pinned_below_two():
    pins = _lock()
    (version, _), *_ = pins["jupyter-book"]
    assert Version("1.0.4.post1") <= version < Version("2"), (
        "Jupyter Book 2 builds nothing from a v1 book"
    )
