"""Figures: what tests print (the measurements docs/reliability.md and the README quote) is
collected from every passing test and shown once, as a "figures" section at the end of the run,
so `make test` and CI show them without `-s` and without the rest of the captured output."""

from __future__ import annotations

import pytest

_figures: list[tuple[str, list[str]]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.capstdout.strip():
        # Ray's forwarded worker logs (coloured "(raylet) ...") and argparse's help are not figures
        lines = [
            line.rstrip()
            for line in report.capstdout.splitlines()
            if line.strip() and "\x1b[" not in line and "(raylet)" not in line
        ]
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


def pytest_collection_modifyitems(config, items):
    """Run order, by module (a module is never split, so its module-scoped fixtures start once):
    1. tests without Ray (tests/unit, tests/gpu);
    2. integration modules that start their own servers (`aspire serve`, their own Ray);
    3. modules on the session's shared Aspire cluster (the `aspire` fixture), which then stays up
       to the end with nothing else running beside it.
    Each server runs alone on the machine's cores, never beside an idle session cluster."""

    def group(item) -> int:
        path = str(item.fspath)
        if "/tests/integration/" not in path:
            return 0
        return 2 if path in shared else 1

    shared = {str(item.fspath) for item in items if "aspire" in getattr(item, "fixturenames", ())}
    order = {}
    for item in items:
        order.setdefault(str(item.fspath), len(order))
    items.sort(key=lambda item: (group(item), order[str(item.fspath)]))


@pytest.fixture(scope="session")
def prometheus_binary():
    """Debian's prometheus (promtool beside it), installed on first use by
    tests/support/prometheus.py. A fixture, so that the install (apt-get, up to 900 s on a slow
    mirror) runs in setup: pytest-timeout times test functions only (pyproject.toml), and its
    limit never stops apt-get half way through a package."""
    from tests.support.prometheus import ensure_prometheus

    return ensure_prometheus()


@pytest.fixture(scope="session")
def export_matrix(tmp_path_factory):
    """Every kind of tests/support/export_matrix.py, exported once per run (Keras and TF trace
    each model: seconds of CPU), for the loader's unit tests and the served matrix."""
    from tests.support.export_matrix import export_all

    return export_all(tmp_path_factory.mktemp("export_matrix"))
