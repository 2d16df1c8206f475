"""The performance appendix: every ``benchmarks/results`` file as a section, a table and a plot.

``.. otdiff-benchmarks:: benchmarks/results`` (a path from the book's root) reads every
``*.json`` there and in its ``gpu/`` folder (the GPU runbook's results) and writes, per file, a
section with the machine and versions recorded in it, the table of its rows, and a bar chart of
its timings (one bar per row and timed quantity, coloured by the implementation compared, log
scale), embedded in the page as a PNG. Nothing is measured here: ``make bench`` refreshes the
files, and the page only reads them.

:func:`load` and :func:`figure_png` are what the tests use.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# A row's key that names the implementation compared (this library, a peer, a baseline).
PEER_KEYS = ("solver", "sampler", "method", "kind", "initializer", "variant")
# Words of a key that holds a measurement (not a setting that labels a row).
METRIC_WORDS = (
    "iteration",
    "cost",
    "error",
    "ratio",
    "speedup",
    "per_",
    "fraction",
    "over",
    "_vs_",
    "works",
    "mib",
    "entries",
    "sweeps",
    "rate",
    "flops",
    "diff",
    "active",
    "parameters",
    "success",
    "objects",
    "peak",
)
# A key that holds a time: "..._s", "..._ms", "..._us" or "seconds".
TIME_SUFFIXES = ("_s", "_ms", "_us")


def _is_time(key: str) -> bool:
    return key == "seconds" or key.endswith(TIME_SUFFIXES)


def _seconds(key: str, value: float) -> float:
    scale = {"_ms": 1e-3, "_us": 1e-6}
    return value * next((f for s, f in scale.items() if key.endswith(s)), 1.0)


def load(path: Path) -> dict[str, Any]:
    """``{title, machine, rows}`` of a results file, whatever its layout.

    The common layout is ``{benchmark, date, machine, settings, results: [row, ...]}``
    (``results`` may also be ``{rows: [...], <summary>: [...]}``, e.g. fitted exponents, whose
    entries are listed after the rows); a file
    whose rows sit in groups (``configs: [{..., rows: [...]}]``) is flattened, each row taking
    its group's scalar fields, and a file without ``machine`` gives its top-level scalars.
    """
    data = json.loads(path.read_text())
    rows = data.get("results")
    if isinstance(rows, dict):  # {"rows": [...], and summaries such as fitted exponents}
        summaries = [v for k, v in rows.items() if k != "rows" and isinstance(v, list)]
        rows = list(rows.get("rows") or []) + [
            r for s in summaries for r in s if isinstance(r, dict)
        ]
    if not isinstance(rows, list):
        rows = []
        for value in data.values():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                for group in value:
                    shared = {
                        k: (str(v) if isinstance(v, list) else v)
                        for k, v in group.items()
                        if not (isinstance(v, list) and v and isinstance(v[0], dict))
                    }
                    inner = [
                        v
                        for v in group.values()
                        if isinstance(v, list) and v and isinstance(v[0], dict)
                    ]
                    for row in inner[0] if inner else [group]:
                        rows.append({**shared, **row})
    machine = data.get("machine")
    if not isinstance(machine, dict):
        machine = {
            k: v for k, v in data.items() if isinstance(v, str | int | float) and k != "benchmark"
        }
    if data.get("date"):
        machine = {"date": data["date"], **machine}
    title = str(data.get("benchmark", path.stem))
    return {"title": title, "machine": machine, "rows": rows, "settings": data.get("settings", {})}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value).replace("|", "/")


def _label(row: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={_format(row[k])}" for k in keys if k in row)


def figure_png(record: dict[str, Any]) -> bytes | None:
    """A bar chart (log scale) of every timing of the rows, or None if the file has none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    times = [k for k in dict.fromkeys(k for r in rows for k in r) if _is_time(k)]
    if not rows or not times:
        return None
    peer = next((k for k in PEER_KEYS if k in rows[0]), None)
    if "median_s" in times:  # the median stands for its run; the fastest and compile times go
        times = [k for k in times if k not in ("min_s", "compile_s")]
    varying = [
        k
        for k in dict.fromkeys(k for r in rows for k in r)
        if k != peer
        and not _is_time(k)
        and not any(word in k for word in METRIC_WORDS)
        and all(
            isinstance(r.get(k), int | float | str) and not isinstance(r.get(k), bool) for r in rows
        )
        and 1 < len({r.get(k) for r in rows}) <= 8
    ]
    bars = []  # (label, seconds, colour group)
    for row in rows:
        for key in times:
            value = row.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                group = str(row.get(peer, key)) if peer else key
                name = _label(row, varying) + (f" [{key}]" if len(times) > 1 and peer else "")
                bars.append((name or key, _seconds(key, value), group))
    if not bars:
        return None
    groups = list(dict.fromkeys(b[2] for b in bars))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.22 * len(bars)), dpi=80)
    y = range(len(bars))
    ax.barh(
        list(y),
        [b[1] for b in bars],
        color=[colours[groups.index(b[2]) % len(colours)] for b in bars],
    )
    ax.set_yticks(list(y), [b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours[i % len(colours)]) for i in range(len(groups))
    ]
    ax.legend(handles, groups, fontsize=7, loc="best")
    ax.set_title(record["title"], fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines += ["   * - " + keys[0]] + [f"     - {k}" for k in keys[1:]]
    for row in rows:
        cells = [_format(row.get(k)) or "-" for k in keys]
        lines += [f"   * - {cells[0]}"] + [f"     - {c}" for c in cells[1:]]
    return lines + [""]


def results_files(folder: Path) -> list[Path]:
    """Every results file: ``folder/*.json``, then ``folder/gpu/*.json``."""
    return sorted(folder.glob("*.json")) + sorted((folder / "gpu").glob("*.json"))


class OtdiffBenchmarks(SphinxDirective):
    """``.. otdiff-benchmarks:: benchmarks/results``: one section per results file."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        folder = Path(self.env.srcdir) / self.arguments[0]
        out: list[nodes.Node] = []
        files = results_files(folder)
        if not files:
            raise self.error(f"no results files (*.json) in {folder}")
        for path in files:
            self.env.note_dependency(str(path))
            record = load(path)
            where = path.relative_to(folder.parent).as_posix()
            title = f"{path.stem} ({where})" + (" on a GPU" if path.parent.name == "gpu" else "")
            lines = [title, "-" * len(title), ""]
            lines += [f"*{record['title']}*", ""]
            lines += [
                "Machine and versions: "
                + "; ".join(f"{k} ``{_format(v)}``" for k, v in record["machine"].items())
                + ".",
                "",
            ]
            if record["settings"]:
                lines += [
                    "Settings: "
                    + "; ".join(f"{k} ``{_format(v)}``" for k, v in record["settings"].items())
                    + ".",
                    "",
                ]
            lines += _table(record["rows"]) if record["rows"] else ["(no rows)", ""]
            container = nodes.container()
            nested_parse_with_titles(self.state, StringList(lines, source=str(path)), container)
            png = figure_png(record)
            if png is not None:
                data = base64.b64encode(png).decode()
                html = (
                    f'<img class="otdiff-benchmark" alt="{path.stem}: timings, log scale" '
                    f'src="data:image/png;base64,{data}" style="max-width:100%">'
                )
                section = container.children[-1] if container.children else container
                section += nodes.raw("", html, format="html")
            out += container.children
        return out


def setup(app):
    app.add_directive("otdiff-benchmarks", OtdiffBenchmarks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
