"""What every benchmark writes: the machine it ran on, its settings and its rows, as JSON."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax


def machine(**versions: str | None) -> dict[str, Any]:
    """The platform, the CPU count, JAX's version and device, and any extra versions given."""
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_device": f"{device.platform}: {device.device_kind}",
        **versions,
    }


def write(path: Path, name: str, settings: dict, results: list, **versions: str | None) -> None:
    """Write ``{benchmark, date, machine, settings, results}`` to ``path`` and say so."""
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(**versions),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
