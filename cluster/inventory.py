"""GPU inventory of one node: read from NVML, or declared where no NVIDIA driver exists.

Both sources return the same `Gpu` records, so the admission code cannot tell them apart.

- `declared_inventory("2x16GiB", node)` / `declared_inventory("16GiB,24GiB", node)`: the value of
  `--gpus=` (or a side config entry), used together with Ray logical GPUs (`--num-gpus`).
- `nvml_inventory(node)`: total memory of each device and the memory used by processes Aspire
  does not own. It returns [] when the NVML library or driver is missing, so it is safe to call
  everywhere; the real GPU path is exercised only on machines with NVIDIA drivers (tests/gpu/).
"""
from __future__ import annotations

import re
from typing import Iterable

from policies.admission import Gpu, parse_bytes

_ITEM_RE = re.compile(r"^\s*(?:([0-9]+)\s*[xX*]\s*)?(\S.*?)\s*$")


def declared_inventory(spec: str, node_id: str) -> list[Gpu]:
    """GPUs declared as "COUNTxSIZE" and/or comma-separated sizes, indexed from 0 in order.

    "2x16GiB" -> two 16 GiB GPUs; "16GiB,24GiB" -> GPU 0 of 16 GiB and GPU 1 of 24 GiB;
    "2x16GiB,24GiB" mixes both. An empty spec or "0" declares no GPU.
    """
    if not isinstance(spec, str):
        raise ValueError(f"GPU inventory must be a string like '2x16GiB', got {spec!r}")
    if spec.strip() in ("", "0"):
        return []
    gpus: list[Gpu] = []
    for item in spec.split(","):
        m = _ITEM_RE.match(item)
        if not m:
            raise ValueError(f"invalid GPU inventory {spec!r}: empty entry; expected "
                             "'COUNTxSIZE' or comma-separated sizes, e.g. '2x16GiB' or "
                             "'16GiB,24GiB'")
        count = int(m.group(1)) if m.group(1) is not None else 1
        if count < 1:
            raise ValueError(f"invalid GPU inventory {spec!r}: GPU count in {item.strip()!r} "
                             "must be at least 1")
        try:
            size = parse_bytes(m.group(2))
        except ValueError as err:
            raise ValueError(f"invalid GPU inventory {spec!r}: {err}") from None
        if size <= 0:
            raise ValueError(f"invalid GPU inventory {spec!r}: GPU memory in {item.strip()!r} "
                             "must be positive")
        for _ in range(count):
            gpus.append(Gpu(node_id, len(gpus), size))
    return gpus


def nvml_inventory(node_id: str, own_pids: Iterable[int] = ()) -> list[Gpu]:
    """This node's GPUs as NVML reports them; [] where NVML or the driver is unavailable.

    `used_by_others_bytes` is the sum of `usedGpuMemory` over the compute and graphics processes
    running on the device whose pid is not in `own_pids` (Aspire's replicas, whose memory the
    reservations already account for). Where the driver does not report a foreign process's
    usage (`usedGpuMemory` is None, e.g. in some containers), the device's used memory minus
    the known usage of `own_pids` is taken instead. Pids must be in NVML's pid namespace.
    """
    try:
        import pynvml
    except ImportError:
        return []
    own = set(own_pids)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            procs = {}
            for getter in ("nvmlDeviceGetComputeRunningProcesses",
                           "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    for proc in getattr(pynvml, getter)(handle):
                        procs.setdefault(proc.pid, proc.usedGpuMemory)
                except (pynvml.NVMLError, AttributeError):
                    pass
            others = {pid: used for pid, used in procs.items() if pid not in own}
            if any(used is None for used in others.values()):
                mine = sum(used or 0 for pid, used in procs.items() if pid in own)
                used_by_others = max(int(memory.used) - mine, 0)
            else:
                used_by_others = sum(others.values())
            gpus.append(Gpu(node_id, index, int(memory.total),
                            min(int(used_by_others), int(memory.total))))
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
