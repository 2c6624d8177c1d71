"""Ports for servers the tests and the bench start.

A port found free by binding to port 0 comes from the kernel's ephemeral range, the same range
every other process (Ray's GCS, raylets, workers and agents, each outgoing connection) takes its
ports from meanwhile: between the check and the server's bind, Ray may take it ("Failed to bind
to address '127.0.0.1:44687'" in one run). `free_port()` picks a random bindable port below the
ephemeral range instead, and above the ports Ray hands its workers (10002-19999 by default), so
nothing that asks the kernel for "any port" can be given it."""

from __future__ import annotations

import random
import socket

LOW = 20000  # above Ray's default worker ports (min_worker_port 10002, max_worker_port 19999)
_taken: set[int] = set()  # handed out by this process: never twice


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    # loopback, and every address for servers that listen on all of them (gRPC's 0.0.0.0)
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    high = ephemeral_range()[0]  # first port the kernel may hand out
    if high - LOW < 1000:  # an unusual range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = random.randrange(LOW, high)
        if port not in _taken and _bindable(port):
            _taken.add(port)
            return port
    raise RuntimeError(f"no free port in [{LOW}, {high})")
