"""Tests draw off-screen; a runner for the scripts that need several (forced host) devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def run_on_four_devices():
    """``run(script, timeout)``: ``tests/<script>`` in a subprocess on four forced host CPU
    devices (``--xla_force_host_platform_device_count=4``: JAX fixes its device count at start-up,
    so a running test process cannot change it), returning the JSON the script prints; the script
    reports ``n_devices`` and ``mesh_shape``, checked here."""

    def run(script: str, timeout: float = 600) -> dict:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / script)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        assert out["n_devices"] == 4 and out["mesh_shape"] == {"data": 4}
        return out

    return run
