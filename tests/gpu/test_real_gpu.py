"""Real-GPU checks of the admission path; skipped where NVML finds no GPU (as on CI machines).

Run on a machine with an NVIDIA driver: `pytest -s tests/gpu`. TensorFlow must see the GPU too
(the `tensorflow[and-cuda]` wheel) for the cap and measurement tests; they skip otherwise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.inventory import nvml_inventory
from core.units import format_bytes
from deployments.replica.loader import SavedModelLoader
from policies.admission import replica_need, tf_memory_limit_bytes

GPUS = nvml_inventory("local")
pytestmark = pytest.mark.skipif(not GPUS, reason="no NVIDIA GPU visible to NVML")
DATA = Path(__file__).resolve().parent.parent / "data"
MODEL = DATA / "saved_model_half_plus_two_gpu" / "00000123"
if not MODEL.exists():
    MODEL = DATA / "saved_model_half_plus_two_cpu" / "00000123"

# Loads the model capped to LIMIT on GPU 0, runs it, and prints what TF and NVML saw.
CHILD = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from deployments.replica.loader import SavedModelLoader
from core.nvml import process_vram_bytes
limit = int(sys.argv[2])
model = SavedModelLoader(sys.argv[1]).load(gpu_memory_limit_bytes=limit)
gpus = [d for d in model._session.list_devices() if d.device_type == "GPU"]
model.run("serving_default", {"x": np.ones((1024, 1), np.float32)})
print(json.dumps({"gpu_limits": [d.memory_limit_bytes for d in gpus],
                  "measured": process_vram_bytes(os.getpid())}))
"""


def run_child(limit: int) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(MODEL), str(limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_nvml_inventory_reports_every_gpu_with_its_memory():
    for gpu in GPUS:
        assert gpu.total_bytes > 0
        assert 0 <= gpu.used_by_others_bytes <= gpu.total_bytes
    print(
        "NVML inventory:",
        [
            (g.index, format_bytes(g.total_bytes), format_bytes(g.used_by_others_bytes))
            for g in GPUS
        ],
    )


def test_tensorflow_is_capped_to_the_reservation_and_measured_under_the_estimate():
    resources = SavedModelLoader(str(MODEL)).estimate_resources()
    estimate = replica_need(
        "gpu", variable_bytes=resources.variable_bytes, ram_estimate_bytes=resources.ram_bytes
    ).vram_bytes
    cap = tf_memory_limit_bytes(
        estimate
    )  # what the replica gives TF: the estimate less the context
    seen = run_child(cap)
    if not seen["gpu_limits"]:
        pytest.skip("TensorFlow sees no GPU (install tensorflow[and-cuda])")
    # TF reserves a little of the limit for itself; the logical device never exceeds it.
    assert all(0 < limit <= cap for limit in seen["gpu_limits"])
    print(
        f"estimated {format_bytes(estimate)}, TF device limit "
        f"{format_bytes(seen['gpu_limits'][0])}, NVML measured "
        f"{format_bytes(seen['measured'] or 0)} (includes the CUDA context)"
    )
    assert seen["measured"] is not None
    assert (
        seen["measured"] <= estimate
    )  # the whole process, CUDA context included, fits the reservation
    # A process that never touched the GPU holds none: asked in a fresh process, since whether
    # this pytest process did depends on which tests ran before.
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from core.nvml import "
            "process_vram_bytes; print(process_vram_bytes(os.getpid()))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.strip().splitlines()[-1] == "None"
