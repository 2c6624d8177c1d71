"""Loaded SavedModels the Open Inference Protocol's unit tests share (no Ray: the loader alone)."""

from __future__ import annotations

import os

import pytest

from deployments.replica.loader import SavedModelLoader
from tests.support.v2_models import export_every_type

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
# pytest-timeout's limit for a unit test's function (pyproject.toml sets 600 s for the rest, and
# times test functions only): nothing here starts Ray or a server process, so a unit test that
# runs past 120 s on a loaded 2-core machine hangs. A test that runs a fresh interpreter (TF's
# import: test_protos.py, test_code_pages.py) carries its own `timeout` marker, which wins; so
# does a limit given for the run (`pytest --timeout=N`, or PYTEST_TIMEOUT).
UNIT_TIMEOUT_S = 120


def pytest_itemcollected(item):
    """Called for the items under tests/unit only (a conftest's hook for its own directory)."""
    for_the_run = item.config.getoption("timeout", None)
    if for_the_run is None:
        for_the_run = os.environ.get("PYTEST_TIMEOUT")
    if item.get_closest_marker("timeout") is None and for_the_run is None:
        item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture(scope="session")
def half_plus_two():
    """TF Serving's half_plus_two (x: FP32 [-1, 1] -> y = x / 2 + 2), loaded."""
    return SavedModelLoader(os.path.join(DATA, "saved_model_half_plus_two_cpu", "00000123")).load()


@pytest.fixture(scope="session")
def every_type(tmp_path_factory):
    """tests/support/v2_models.py's model of every datatype, exported and loaded."""
    return SavedModelLoader(export_every_type(str(tmp_path_factory.mktemp("v2types") / "1"))).load()
