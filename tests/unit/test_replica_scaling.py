"""How many replicas a version reserves and how Serve scales each of its applications."""

from pathlib import Path

import pytest

from cluster.backend.serve_backend import ServeBackend
from config.aspire_config import Autoscaling, ModelSettings
from config.options import ReplicaOptions

MODEL = Path(__file__).resolve().parents[1] / "data" / "saved_model_half_plus_two_cpu" / "00000123"


def backend(**settings) -> ServeBackend:
    b = ServeBackend(ReplicaOptions(num_replicas=3))
    b.settings = {"m": ModelSettings(**settings)} if settings else {}
    return b


def test_fixed_replicas_come_from_the_side_file_else_the_flag():
    assert backend()._replicas("m") == 3
    assert backend(num_replicas=2)._replicas("m") == 2
    assert backend(num_replicas=2)._scaling("m", [1, 1]) == [
        {"num_replicas": 1},
        {"num_replicas": 1},
    ]


def test_autoscaled_version_reserves_max_replicas_through_admission():
    b = backend(autoscaling=Autoscaling(1, 4), device="gpu", vram_bytes=2**30)
    need, count = b.need("m", 123, str(MODEL), has_gpus=True, measured_vram_bytes=None)
    assert count == 4  # every replica autoscaling may start is booked before the first one
    assert need.vram_bytes == 2**30


@pytest.mark.parametrize(
    "low,counts,floors",
    [
        (1, [4], [1]),
        (3, [2, 2], [2, 1]),
        (1, [1, 1, 2], [1, 1, 1]),  # every reserved (node, GPU) keeps one warm replica
        (4, [2, 2], [2, 2]),
    ],
)
def test_autoscaling_spreads_min_replicas_over_the_applications(low, counts, floors):
    got = backend(autoscaling=Autoscaling(low, sum(counts), 1.5))._scaling("m", counts)
    assert [g["autoscaling_config"]["min_replicas"] for g in got] == floors
    assert [g["autoscaling_config"]["max_replicas"] for g in got] == counts
    assert all(g["autoscaling_config"]["target_ongoing_requests"] == 1.5 for g in got)
    assert all("num_replicas" not in g for g in got)
