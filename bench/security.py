"""What securing the direct data path costs: `.venv/bin/python bench/security.py` (under a minute).

The replica's call service (deployments/replica/call_service.py) and a router's link to it
(deployments/router/replica_client.py) run in this process over loopback, the service on its own
thread and event loop as in a replica, the link on this thread's; every call carries the same
small payload (half_plus_two's REST body) and the service answers it at once, so what is measured
is the path itself. Two systems, each measured at concurrency 1 and 64 (closed loop, all calls on
one connection, as a router keeps one per replica):
  plain  the data-plane key proved by the handshake (deployments/wire/direct.py), no TLS
  tls    the same inside mutual TLS (RAY_USE_TLS with test certificates from
         tests/support/certs.py; deployments/wire/internal_tls.py)
Per call it prints p50/p99 latency, throughput and the process's CPU time per call, and the
ratios tls / plain. The handshake adds nothing to a call (it runs once per connection), so its
cost is the connection set-up, measured as the time to open a new connection and answer its
first call, beside a bare TCP connect for reference. Client and service share this process and
its GIL, unlike a router and a replica on two hosts: the ratios are the useful part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.replica.call_service import ReplicaService  # noqa: E402
from deployments.router.replica_client import ReplicaLink  # noqa: E402
from deployments.wire import internal_tls  # noqa: E402
from deployments.wire.direct import decode_answer, encode_answer, new_event_loop  # noqa: E402
from tests.support.certs import CertAuthority  # noqa: E402

PAYLOAD = b'{"instances": [1.0, 2.0, 5.0]}'
KEY = "bench-" + "k" * 26
SYSTEMS = ("plain", "tls")
TLS_ENV = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def use_tls(on: bool, folder: Path) -> None:
    """Ray's TLS settings in this process's environment, as a Ray node would have them."""
    if not on:
        for name in TLS_ENV:
            os.environ.pop(name, None)
        return
    ca = CertAuthority.create(folder / "ca")
    node = ca.issue(folder / "node", "node")
    os.environ.update(
        RAY_USE_TLS="1",
        RAY_TLS_SERVER_CERT=str(node.cert),
        RAY_TLS_SERVER_KEY=str(node.key),
        RAY_TLS_CA_CERT=str(ca.cert),
    )
    assert internal_tls.enabled()


def start_service() -> ReplicaService:
    service: ReplicaService

    def submit(method: str, payload: bytes, key: str) -> asyncio.Future[bytes]:
        assert service.loop is not None  # called on the service's loop
        future = service.loop.create_future()
        future.set_result(encode_answer("OK", payload))
        return future

    service = ReplicaService(submit, KEY, "127.0.0.1")
    service.start()
    return service


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def load(port: int, concurrency: int, seconds: float) -> dict:
    """A closed loop of `concurrency` callers on one link for `seconds`, after a short warm-up."""
    link = ReplicaLink("bench", "127.0.0.1", port, concurrency, KEY)
    latencies: list[float] = []
    recording = False
    stop_at = 0.0

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            answer = await link.call("predict", PAYLOAD, 30)
            if recording:
                latencies.append(time.perf_counter() - started)
            assert decode_answer(answer) == PAYLOAD

    stop_at = time.perf_counter() + min(0.5, seconds / 4)  # warm-up: connection, caches
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    recording = True
    cpu, wall = time.process_time(), time.perf_counter()
    stop_at = wall + seconds
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    link.close()
    latencies.sort()
    return {
        "calls": len(latencies),
        "rps": len(latencies) / wall,
        "p50": percentile(latencies, 0.50) * 1e3,
        "p99": percentile(latencies, 0.99) * 1e3,
        "cpu_us": cpu / len(latencies) * 1e6,
    }


async def set_up(port: int, connections: int) -> dict:
    """Time to open a new connection and answer its first call, and a bare TCP connect."""
    opened, bare = [], []
    for _ in range(connections):
        link = ReplicaLink("bench", "127.0.0.1", port, 1, KEY)
        started = time.perf_counter()
        await link.call("predict", PAYLOAD, 30)
        opened.append(time.perf_counter() - started)
        link.close()
        started = time.perf_counter()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        bare.append(time.perf_counter() - started)
        writer.close()
    return {
        "first_call_ms": statistics.median(opened) * 1e3,
        "first_call_p99_ms": percentile(sorted(opened), 0.99) * 1e3,
        "tcp_ms": statistics.median(bare) * 1e3,
    }


def measure(system: str, folder: Path, seconds: float, connections: int) -> dict:
    use_tls(system == "tls", folder / system)
    service = start_service()
    loop = new_event_loop()  # uvloop, as the routers run
    try:
        assert service.port is not None
        return {
            "setup": loop.run_until_complete(set_up(service.port, connections)),
            **{c: loop.run_until_complete(load(service.port, c, seconds)) for c in (1, 64)},
        }
    finally:
        loop.close()
        service.stop(1.0)
        use_tls(False, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per point (default 4)")
    parser.add_argument("--connections", type=int, default=200, help="set-up samples")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: measure(s, Path(tmp), args.seconds, args.connections) for s in SYSTEMS}
    print(
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
        f"{args.seconds:g} s per point, payload {len(PAYLOAD)} B, in-process over loopback "
        "(client and service share one process).\n"
    )
    print("**Per call** (one connection, closed loop)\n")
    print("| system | conc. | calls | req/s | p50 ms | p99 ms | CPU us / call |")
    print("|---|---|---|---|---|---|---|")
    for system in SYSTEMS:
        for c in (1, 64):
            r = results[system][c]
            print(
                f"| {system} | {c} | {r['calls']} | {r['rps']:.0f} | {r['p50']:.3f} | "
                f"{r['p99']:.3f} | {r['cpu_us']:.1f} |"
            )
    print("\n**tls / plain**\n")
    print("| conc. | req/s | p50 | p99 | CPU / call |")
    print("|---|---|---|---|---|")
    for c in (1, 64):
        p, t = results["plain"][c], results["tls"][c]
        print(
            f"| {c} | {t['rps'] / p['rps']:.2f} | {t['p50'] / p['p50']:.2f} | "
            f"{t['p99'] / p['p99']:.2f} | {t['cpu_us'] / p['cpu_us']:.2f} |"
        )
    print(f"\n**Connection set-up** (median of {args.connections}, sequential)\n")
    print("| system | TCP connect ms | connect + handshake + first call ms (p99) | call p50 ms |")
    print("|---|---|---|---|")
    for system in SYSTEMS:
        s, one = results[system]["setup"], results[system][1]
        print(
            f"| {system} | {s['tcp_ms']:.3f} | {s['first_call_ms']:.3f} "
            f"({s['first_call_p99_ms']:.3f}) | {one['p50']:.3f} |"
        )
    print(f"\nTotal {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
