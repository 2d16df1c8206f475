"""Repository-wide pytest hooks: each notebook's execution time, printed after an nbval run.

Every chapter's demo preset must execute in about 90 seconds on a 2-core CPU so that the whole
test run stays well inside CI's budget with a dozen chapters; the table makes a slow chapter
visible in every test log.
"""

from collections import defaultdict

NOTEBOOK_BUDGET_S = 90.0
_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section("notebook execution times")
    for path, seconds in sorted(_notebook_seconds.items()):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")
    total = sum(_notebook_seconds.values())
    terminalreporter.write_line(f"{total:7.1f} s  total ({NOTEBOOK_BUDGET_S:.0f} s budget each)")
