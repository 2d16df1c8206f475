"""The GPU runbook (``benchmarks/gpu.sh``) is consistent with the benchmarks it runs.

CI has no GPU: ``make test`` runs the script's dry run (``make gpu-dry``: the same code path, one
chapter at ``demo`` and one benchmark at tiny sizes). What only the GPU run uses is checked here
statically: every benchmark has GPU sizes in the script's table, and every flag given there is
one that benchmark accepts.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
TABLE = re.compile(r"declare -A GPU_ARGS=\((?P<body>.*?)\n\)", re.DOTALL)
ENTRY = re.compile(r"\[(?P<name>\w+)\]=\"(?P<args>[^\"]*)\"")


def _table() -> dict[str, str]:
    body = TABLE.search(SCRIPT.read_text())["body"]
    return {m["name"]: m["args"] for m in ENTRY.finditer(body)}


def test_every_benchmark_has_gpu_sizes():
    benchmarks = {p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert set(_table()) == benchmarks, (
        "benchmarks/gpu.sh's GPU_ARGS must list every benchmarks/bench_*.py (and only those): "
        f"missing {sorted(benchmarks - set(_table()))}, unknown {sorted(set(_table()) - benchmarks)}"
    )


@pytest.mark.parametrize("name, args", sorted(_table().items()))
def test_gpu_flags_are_accepted(name, args):
    source = (ROOT / "benchmarks" / f"bench_{name}.py").read_text()
    for flag in re.findall(r"--[a-z][a-z-]*", args):
        assert f'"{flag}"' in source, f"bench_{name}.py has no option {flag} (benchmarks/gpu.sh)"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
