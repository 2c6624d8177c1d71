"""Declared GPU inventories, and NVML reading with a stand-in module (the real path runs only
where NVIDIA drivers exist: tests/gpu/)."""

import os
import sys
import types
from types import SimpleNamespace

import pytest

from cluster.inventory import (
    aspire_pids,
    capacity_grew,
    declared_inventory,
    nodes_inventory,
    nvml_inventory,
)
from core.units import GIB, MIB
from policies.admission import Gpu


@pytest.mark.parametrize(
    "spec,sizes",
    [
        ("2x16GiB", [16 * GIB, 16 * GIB]),
        ("16GiB,24GiB", [16 * GIB, 24 * GIB]),
        ("2x16GiB,24GiB", [16 * GIB, 16 * GIB, 24 * GIB]),
        ("1x512MiB", [512 * MIB]),
        (" 3 X 8GiB ", [8 * GIB] * 3),
        ("40GB", [40_000_000_000]),
        ("", []),
        ("0", []),
    ],
)
def test_declared_inventory(spec, sizes):
    gpus = declared_inventory(spec, "node-a")
    assert gpus == [Gpu("node-a", i, s) for i, s in enumerate(sizes)]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("0x16GiB", "count in '0x16GiB' must be at least 1"),
        ("2x", "invalid size"),
        ("16GiB,,8GiB", "empty entry"),
        ("2x16Gx", "unknown unit"),
        ("0GiB", "must be positive"),
        ("lots", "invalid size"),
        (None, "must be a string"),
    ],
)
def test_declared_inventory_rejects(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        declared_inventory(spec, "n")
    if isinstance(spec, str):
        assert str(info.value).startswith(f"invalid GPU inventory {spec!r}")


def test_nvml_inventory_is_empty_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert nvml_inventory("n1") == []
    assert nvml_inventory("n1", own_pids=[1, 2]) == []


def _fake_pynvml(devices, fail_init=False):
    class NVMLError(Exception):
        pass

    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError
    mod.calls = []

    def init():
        mod.calls.append("init")
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    mod.nvmlDeviceGetMemoryInfo = lambda d: SimpleNamespace(total=d["total"], used=d["used"])
    mod.nvmlDeviceGetComputeRunningProcesses = lambda d: [
        SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d["compute"]
    ]
    mod.nvmlDeviceGetGraphicsRunningProcesses = lambda d: [
        SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in d.get("graphics", [])
    ]
    return mod


def test_nvml_inventory_counts_foreign_processes_only(monkeypatch):
    devices = [
        {
            "total": 16 * GIB,
            "used": 9 * GIB,
            "compute": [(10, 4 * GIB), (11, 3 * GIB)],
            "graphics": [(12, GIB), (10, 4 * GIB)],
        },
        {"total": 24 * GIB, "used": 0, "compute": []},
        # the driver hides a foreign process's usage: used minus our own known usage
        {"total": 8 * GIB, "used": 5 * GIB, "compute": [(10, 2 * GIB), (99, None)]},
    ]
    fake = _fake_pynvml(devices)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert nvml_inventory("n1", own_pids={10}) == [
        Gpu("n1", 0, 16 * GIB, 4 * GIB),
        Gpu("n1", 1, 24 * GIB, 0),
        Gpu("n1", 2, 8 * GIB, 3 * GIB),
    ]
    assert fake.calls == ["init", "shutdown"]
    assert nvml_inventory("n1")[0].used_by_others_bytes == 8 * GIB


def test_nvml_inventory_init_failure_returns_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([], fail_init=True))
    assert nvml_inventory("n1") == []


# -- the cluster's inventory from Ray's node records ---------------------------------------------


def node(node_id, gpus=0, memory=8 * GIB, alive=True):
    resources = {"CPU": 2.0, "memory": float(memory)}
    if gpus:
        resources["GPU"] = float(gpus)
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_declared_gpus_go_to_nodes_with_ray_gpus_only():
    gpus, ram, _ = nodes_inventory(
        [node("head"), node("w1", gpus=2), node("dead", gpus=2, alive=False)],
        "2x16GiB",
        probe=lambda n: pytest.fail("no probe when declared"),
    )
    assert gpus == [Gpu("w1", 0, 16 * GIB), Gpu("w1", 1, 16 * GIB)]
    assert ram == {"head": 8 * GIB, "w1": 8 * GIB}


def test_a_declaration_never_invents_gpus_ray_cannot_see():
    gpus, _, _ = nodes_inventory([node("w1", gpus=1)], "2x16GiB", probe=None)
    assert gpus == [Gpu("w1", 0, 16 * GIB)]


def test_without_a_declaration_each_gpu_node_is_probed():
    probed = []

    def probe(node_id):
        probed.append(node_id)
        return [Gpu(node_id, 0, 80 * GIB, used_by_others_bytes=GIB)]

    gpus, _, _ = nodes_inventory([node("head"), node("w1", gpus=1)], None, probe)
    assert probed == ["w1"]
    assert gpus == [Gpu("w1", 0, 80 * GIB, GIB)]


def test_ray_cpus_for_replicas_are_the_nodes_cpus_less_what_aspire_books_there():
    head = node("head")
    head["Resources"]["node:__internal_head__"] = 1.0
    seen = []

    def held(node_id, is_head):
        seen.append((node_id, is_head))
        return 0.5 if is_head else 3.0  # more than the worker has: never below 0

    _, _, cpus = nodes_inventory([head, node("w1"), node("dead", alive=False)], None, None, held)
    assert cpus == {"head": 1.5, "w1": 0.0}
    assert seen == [("head", True), ("w1", False)]
    assert nodes_inventory([node("w1")], None, None)[2] == {"w1": 2.0}  # nothing held


def test_capacity_grows_with_a_new_node_or_less_foreign_use_only():
    cpus = {"n": 1.0}
    base = ([Gpu("n", 0, 16 * GIB, GIB)], {"n": 8 * GIB}, cpus)
    assert not capacity_grew(base, base)
    assert capacity_grew(base, ([Gpu("n", 0, 16 * GIB, 0)], {"n": 8 * GIB}, cpus))
    assert capacity_grew(
        base, (base[0] + [Gpu("m", 0, GIB)], {"n": 8 * GIB, "m": GIB}, {**cpus, "m": 1.0})
    )
    assert capacity_grew(base, (base[0], base[1], {"n": 2.0}))  # more Ray CPUs
    assert not capacity_grew(base, ([Gpu("n", 0, 16 * GIB, 2 * GIB)], {"n": 8 * GIB}, cpus))
    assert not capacity_grew(base, ([], {}, {}))  # a node leaving frees nothing


def test_aspire_pids_finds_processes_marked_as_replicas():
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print(1, flush=True); time.sleep(30)"],
        env={**os.environ, "ASPIRE_SERVABLE": "test-app"},
        stdout=subprocess.PIPE,
    )
    try:
        child.stdout.readline()  # it has exec'd with its own environment
        assert child.pid in aspire_pids()
        assert os.getpid() not in aspire_pids()
    finally:
        child.kill()
        child.wait()
