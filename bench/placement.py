"""Admission on paper: placement decisions on a declared inventory of 1,000 nodes x 8 GPUs.

The real pure policy (policies/admission.py `place()`), behind the real reservation book
(cluster/reservations.py) and the manager's admission state (cluster/admission_state.py
`Admission.place`, called under its lock as the loader harness calls it). Nothing runs: a stream
of version requests, drawn with a fixed seed, asks for room until the cluster is full.

Each request is one version: VRAM per replica log-uniform in [0.5, 30] GiB, host RAM per replica
the same size (the weights are read into the host first), 1 replica (80%), 2 (15%) or 4 (5%),
all replicas or none (`reserve_all`). Every node has 8 GPUs of 80 GiB and 2 TiB of host RAM, so
GPU memory is what runs out.

Reported, for each cluster size asked:
- the time of one admission decision (one version request, all its replicas): mean, p99, max;
- placement quality: the fraction of the cluster's VRAM booked when the first request is refused,
  and after going on until 1% of the requests so far were refused.

`place()` looks at every GPU on each decision, so one decision costs O(GPUs) and filling
1,000 x 8 GPUs takes about 60,000 decisions. To stay within about 2 minutes the default run
times decisions on 1,000 nodes for `--timing-s` seconds (the cluster partly filled) and fills a
100-node cluster completely for the quality figures; `--quality-nodes 1000` fills the full size.

Usage: .venv/bin/python bench/placement.py [--nodes 1000] [--quality-nodes 100] [--timing-s 40]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.admission_state import Admission  # noqa: E402
from cluster.reservations import Reservations  # noqa: E402
from policies.admission import Gpu, Need, Refusal  # noqa: E402

GIB = 1024**3
MIB = 1024**2
GPUS_PER_NODE = 8
GPU_BYTES = 80 * GIB
NODE_RAM_BYTES = 2048 * GIB
SEED = 20261207
REPLICAS = ((1, 0.80), (2, 0.15), (4, 0.05))


class NoBackend:
    """Admission.place never calls the backend for a version with its own replicas; this only
    makes `Admission` constructible (no shared hosts)."""

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        raise AssertionError("not called")


def requests(seed: int):
    """(VRAM bytes per replica, replicas), forever, from a fixed seed."""
    rng = random.Random(seed)
    low, high = math.log(0.5 * GIB), math.log(30 * GIB)
    weights = [w for _, w in REPLICAS]
    counts = [r for r, _ in REPLICAS]
    while True:
        vram = int(math.exp(rng.uniform(low, high))) // MIB * MIB
        yield vram, rng.choices(counts, weights)[0]


def cluster(nodes: int) -> Admission:
    ids = [f"node-{n:04d}" for n in range(nodes)]
    gpus = [Gpu(node, i, GPU_BYTES) for node in ids for i in range(GPUS_PER_NODE)]
    book = Reservations(gpus, {node: NODE_RAM_BYTES for node in ids})
    return Admission(NoBackend(), book)  # type: ignore[arg-type]


def booked(admission: Admission, nodes: int) -> float:
    assert admission.book is not None
    held = sum(p.vram_bytes for p in admission.book.held().values())
    return held / (nodes * GPUS_PER_NODE * GPU_BYTES)


def simulate(
    nodes: int, seed: int = SEED, refused_share: float = 0.01, time_limit_s: float | None = None
) -> dict:
    """Feed requests until `refused_share` of them were refused (or `time_limit_s` passed);
    every decision timed."""
    admission = cluster(nodes)
    times: list[float] = []
    refused = 0
    first_refusal: dict | None = None
    started = time.monotonic()
    stopped_by_time = False
    for n, (vram, replicas) in enumerate(requests(seed)):
        name = f"model-{n:06d}"
        keys = [f"{name}/1/{r}" for r in range(replicas)]
        need = Need(vram_bytes=vram, ram_bytes=vram)
        t0 = time.perf_counter()
        with admission.lock:
            placed = admission.place(f"{name}/1", need, keys, shared=False)
        times.append(time.perf_counter() - t0)
        if isinstance(placed, Refusal):
            refused += 1
            if first_refusal is None:
                first_refusal = {
                    "request": n + 1,
                    "booked": booked(admission, nodes),
                    "need_gib": vram / GIB,
                    "replicas": replicas,
                    "reason": placed.reason,
                }
            if refused >= refused_share * (n + 1):
                break
        if time_limit_s is not None and time.monotonic() - started > time_limit_s:
            stopped_by_time = True
            break
    ms = sorted(t * 1000 for t in times)
    return {
        "nodes": nodes,
        "gpus": nodes * GPUS_PER_NODE,
        "requests": len(times),
        "replicas_held": len(admission.book.held()) if admission.book is not None else 0,
        "refused": refused,
        "mean_ms": statistics.fmean(ms),
        "p99_ms": ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)],
        "max_ms": ms[-1],
        "first_refusal": first_refusal,
        "booked_end": booked(admission, nodes),
        "stopped_by_time": stopped_by_time,
        "seconds": time.monotonic() - started,
    }


def describe(r: dict) -> str:
    lines = [
        f"{r['nodes']} nodes x {GPUS_PER_NODE} GPUs of {GPU_BYTES // GIB} GiB ({r['gpus']} GPUs): "
        f"{r['requests']} requests, {r['replicas_held']} replicas held, {r['refused']} refused, "
        f"{r['seconds']:.1f} s",
        f"  decision time (one version, all its replicas): mean {r['mean_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms",
    ]
    first = r["first_refusal"]
    if first is not None:
        lines.append(
            f"  first refusal at request {first['request']} ({first['need_gib']:.1f} GiB x "
            f"{first['replicas']}, {first['reason']}): {first['booked']:.1%} of VRAM booked"
        )
    if r["stopped_by_time"]:
        lines.append(f"  stopped by the time limit with {r['booked_end']:.1%} of VRAM booked")
    else:
        lines.append(f"  at 1% of requests refused: {r['booked_end']:.1%} of VRAM booked")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000, help="cluster for decision times")
    parser.add_argument("--timing-s", type=float, default=40.0, help="time limit for --nodes")
    parser.add_argument(
        "--quality-nodes", type=int, default=100, help="cluster filled to 1%% refusals"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON lines")
    args = parser.parse_args()
    runs = [simulate(args.nodes, args.seed, time_limit_s=args.timing_s)]
    if args.quality_nodes:
        runs.append(simulate(args.quality_nodes, args.seed))
    for r in runs:
        print(json.dumps(r) if args.json else describe(r))


if __name__ == "__main__":
    main()
