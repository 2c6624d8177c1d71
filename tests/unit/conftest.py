"""Loaded SavedModels the Open Inference Protocol's unit tests share (no Ray: the loader alone)."""

from __future__ import annotations

import os

import pytest

from deployments.replica.loader import SavedModelLoader
from tests.support.v2_models import export_every_type

DATA = os.path.join(os.path.dirname(__file__), "..", "data")


@pytest.fixture(scope="session")
def half_plus_two():
    """TF Serving's half_plus_two (x: FP32 [-1, 1] -> y = x / 2 + 2), loaded."""
    return SavedModelLoader(os.path.join(DATA, "saved_model_half_plus_two_cpu", "00000123")).load()


@pytest.fixture(scope="session")
def every_type(tmp_path_factory):
    """tests/support/v2_models.py's model of every datatype, exported and loaded."""
    return SavedModelLoader(export_every_type(str(tmp_path_factory.mktemp("v2types") / "1"))).load()
