"""The Manager's reconcile step at scale: 1,000 (or 10,000) models x 3 versions, fake loaders.

The real Manager (cluster/manager.py) with admission on (a Reservations book of 8 nodes x 8 GPUs
and host RAM), driven as cluster/manager_actor.py drives it: the source emits every model's aspired
versions, then `reconcile()` runs every 100 ms. The backend answers at once, so what is timed is
the Manager's own work: policy decisions, admission, state changes, serving-map publication.

Reported: the time of one `set_aspired_versions` sweep over all models, of each reconcile pass
while versions load (a pass looks at `STREAMS_PER_PASS`, 1,000, marked streams at most, so the
first starts 1,000 loads), of a steady-state pass with nothing to do, and of a rollout pass
(every model gets a 4th version; Latest-3 unloads the oldest); and how long each phase took to
settle (from the sweep to every version in place), which a per-pass limit must not lengthen.
The controller reconciles every 100 ms, so `passes_over_100ms` counts the busy passes that
overran that period. `--models 10000` (30,000 versions) runs in about 30 s on 2 CPUs.

Usage: .venv/bin/python bench/reconcile.py [--models 1000] [--versions 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.manager import STREAMS_PER_PASS, Manager  # noqa: E402
from cluster.reservations import Reservations  # noqa: E402
from core.deployed import Deployed  # noqa: E402
from policies.admission import Gpu, Need  # noqa: E402

GIB = 1024**3


class FakeBackend:
    """Sizes every version at 100 MiB of VRAM and 200 MiB of RAM; loads and unloads at once."""

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(vram_bytes=100 * 2**20, ram_bytes=200 * 2**20), 1

    def load(self, name, version, path, placements=None):
        return Deployed(apps=((f"{name}-{version}", 1),))

    def unload(self, deployed):
        pass


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def drive(manager: Manager, done, timeout_s: float = 600) -> list[tuple[float, float]]:
    """reconcile() until `done()`, as the controller does (a pass, then 100 ms idle); returns
    each pass's (wall ms, CPU ms of the reconciling thread). Wall time includes waiting for the
    GIL and the lock while 16 load threads finish their (instant, so CPU-bound) fake loads."""
    passes = []
    deadline = time.monotonic() + timeout_s
    while not done():
        cpu = time.thread_time()
        ms, _ = timed(manager.reconcile)
        passes.append((ms, (time.thread_time() - cpu) * 1000))
        time.sleep(0.1)
        if time.monotonic() > deadline:
            raise TimeoutError("versions did not settle")
    return passes


def run(models: int = 1000, versions: int = 3, quiet: bool = False) -> dict:
    gpus = [Gpu(f"node{n}", i, 80 * GIB) for n in range(8) for i in range(8)]
    book = Reservations(gpus, {f"node{n}": 2048 * GIB for n in range(8)})
    manager = Manager(FakeBackend(), num_load_threads=16, max_num_load_retries=0, book=book)
    names = [f"model-{i:05d}" for i in range(models)]

    def aspire(first: int):
        for name in names:
            manager.set_aspired_versions(
                name, {v: f"/models/{name}/{v}" for v in range(first, first + versions)}
            )

    def settled(expected_available: int):
        def check():
            states = [s["state"] for st in manager.list_models().values() for s in st]
            return states.count("AVAILABLE") == expected_available and not {
                "START",
                "LOADING",
                "UNLOADING",
            } & set(states)

        return check

    try:
        started = time.perf_counter()
        emit_ms, _ = timed(lambda: aspire(1))
        load_passes = drive(manager, settled(models * versions))
        load_s = time.perf_counter() - started
        idle = [timed(manager.reconcile)[0] for _ in range(20)]
        started = time.perf_counter()
        aspire(2)  # each model: version 1 leaves, version `versions + 1` arrives
        rollout_passes = drive(manager, settled(models * versions))
        rollout_s = time.perf_counter() - started
    finally:
        manager.shutdown()
    busy = load_passes + rollout_passes
    wall, cpu = [w for w, _ in busy], [c for _, c in busy]
    result = {
        "models": models,
        "versions": versions,
        "emit_ms": emit_ms,
        "passes": len(busy),
        "first_pass_ms": load_passes[0][0],
        "rollout_first_pass_ms": rollout_passes[0][0],
        "median_wall_ms": statistics.median(wall),
        "max_wall_ms": max(wall),
        "median_cpu_ms": statistics.median(cpu),
        "max_cpu_ms": max(cpu),
        "passes_over_100ms": sum(w > 100 for w in wall),
        "idle_pass_ms": statistics.median(idle),
        "load_s": load_s,
        "rollout_s": rollout_s,
    }
    if not quiet:
        print(
            f"reconcile, {models} models x {versions} versions, fake loaders, admission on "
            f"(64 GPUs on 8 nodes):"
        )
        print(f"  set_aspired_versions for all models: {emit_ms:.1f} ms")
        print(
            f"  first pass (starts {min(models, STREAMS_PER_PASS)} loads): "
            f"{result['first_pass_ms']:.1f} ms; first rollout pass: "
            f"{result['rollout_first_pass_ms']:.1f} ms"
        )
        print(
            f"  {len(busy)} passes while versions load and roll out: reconciling thread's CPU "
            f"median {result['median_cpu_ms']:.1f} ms, max {result['max_cpu_ms']:.1f} ms; wall "
            f"median {result['median_wall_ms']:.1f} ms, max {result['max_wall_ms']:.1f} ms"
        )
        print(f"  busy passes over the 100 ms period: {result['passes_over_100ms']}")
        print(f"  steady state (nothing to do): {result['idle_pass_ms']:.3f} ms per pass")
        print(f"  settled in: load {load_s:.1f} s, rollout {rollout_s:.1f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    result = run(args.models, args.versions, quiet=args.json)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
