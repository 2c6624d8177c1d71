"""Figures: what tests print (the measurements docs/reliability.md and the README quote) is
collected from every passing test and shown once, as a "figures" section at the end of the run,
so `make test` and CI show them without `-s` and without the rest of the captured output."""
from __future__ import annotations

import pytest

_figures: list[tuple[str, list[str]]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.capstdout.strip():
        # Ray's forwarded worker logs (coloured "(raylet) ...") and argparse's help are not figures
        lines = [line.rstrip() for line in report.capstdout.splitlines()
                 if line.strip() and "\x1b[" not in line and "(raylet)" not in line]
        if lines and not lines[0].startswith("usage:"):
            _figures.append((report.nodeid, lines))


def pytest_terminal_summary(terminalreporter):
    if not _figures:
        return
    terminalreporter.section("figures")
    for nodeid, lines in _figures:
        terminalreporter.write_line(nodeid)
        for line in lines:
            terminalreporter.write_line(f"    {line}")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Run order, by module (a module is never split, so its module-scoped fixtures start once).

    One process (`pytest tests`):
    1. tests without Ray (tests/unit, tests/gpu);
    2. integration modules that start their own servers (`aspire serve`, their own Ray);
    3. modules on the session's shared Aspire cluster (the `aspire` fixture), which then stays up
       to the end with nothing else running beside it.

    Two xdist workers (`make test`: `-n 2 --dist loadgroup --no-loadscope-reorder`): every module
    is an xdist group of its own, and the modules on the shared cluster are one group together,
    so the cluster starts once, on one worker. That group goes first (it is the longest); the
    other worker meanwhile takes the servers of their own, then the unit tests, module by module,
    and the first worker to finish takes what is left."""
    def group(item) -> int:
        path = str(item.fspath)
        if "/tests/integration/" not in path:
            return 2 if parallel else 0
        if path in shared:
            return 0 if parallel else 2
        return 1

    # collection runs in the workers, which carry `workerinput` (their `dist` option is "no")
    parallel = hasattr(config, "workerinput")
    shared = {str(item.fspath) for item in items if "aspire" in getattr(item, "fixturenames", ())}
    order = {}
    for item in items:
        order.setdefault(str(item.fspath), len(order))
    items.sort(key=lambda item: (group(item), order[str(item.fspath)]))
    if parallel:
        for item in items:
            path = str(item.fspath)
            item.add_marker(pytest.mark.xdist_group(
                "shared-cluster" if path in shared else item.nodeid.split("::")[0]))
