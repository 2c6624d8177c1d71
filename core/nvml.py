"""NVML reads that both planes make: what a process holds on the GPUs.

The cluster's GPU inventory (cluster/inventory.py) reads devices through NVML too; a replica
measures its own peak after loading (deployments/replica/servable.py) with `process_vram_bytes`.
"""

from __future__ import annotations


def process_vram_bytes(pid: int) -> int | None:
    """GPU memory NVML reports used by process `pid`, summed over devices; None without NVML or
    where the driver does not report it. A replica calls it on itself after loading and warmup:
    that is the measured peak the manager remembers for the version."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        total, seen = 0, False
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    total, seen = total + int(proc.usedGpuMemory), True
        return total if seen else None
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
