"""Sequential REST latency of half_plus_two: Aspire against baselines measured in the same run.

  direct   : the loaded model called in-process (no HTTP): the floor
  baseline : one FastAPI/uvicorn process holding the model (bench/baseline_server.py)
  aspire   : Aspire on an embedded Ray (Serve proxy -> router -> version deployment)

Prints p50/p90/p99 per target and the ratios aspire/baseline and aspire/direct, plus the time from
start to the first AVAILABLE version. Usage: .venv/bin/python bench/rest_latency.py [--requests N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "tests" / "data" / "saved_model_half_plus_two_cpu"
BODY = {"instances": [1.0, 2.0, 5.0]}
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(name: str, samples_s: list[float]) -> dict:
    ms = sorted(x * 1000 for x in samples_s)
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]  # noqa: E731
    row = {"target": name, "n": len(ms), "mean_ms": statistics.fmean(ms), "p50_ms": q(0.5),
           "p90_ms": q(0.9), "p99_ms": q(0.99)}
    print(f"{name:9s} n={row['n']:5d} mean={row['mean_ms']:7.3f} ms  p50={row['p50_ms']:7.3f}  "
          f"p90={row['p90_ms']:7.3f}  p99={row['p99_ms']:7.3f}")
    return row


def http_latency(url: str, n: int, warmup: int) -> list[float]:
    session = requests.Session()
    for _ in range(warmup):
        assert session.post(url, json=BODY, timeout=30).json() == EXPECTED
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        r = session.post(url, json=BODY, timeout=30)
        samples.append(time.perf_counter() - t)
        assert r.status_code == 200
    return samples


def direct_latency(n: int, warmup: int) -> list[float]:
    from deployments import inference
    from deployments.loader import SavedModelLoader
    model = SavedModelLoader(str(MODEL / "00000123")).load()
    for _ in range(warmup):
        inference.handle_rest(model, "predict", dict(BODY))
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        inference.handle_rest(model, "predict", json.loads(json.dumps(BODY)))
        samples.append(time.perf_counter() - t)
    return samples


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.post(url, json=BODY, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"python {platform.python_version()}")
    rows = [summarize("direct", direct_latency(args.requests, args.warmup))]

    port = free_port()
    baseline = subprocess.Popen([sys.executable, str(ROOT / "bench" / "baseline_server.py"),
                                 "half_plus_two", str(MODEL / "00000123"), str(port)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict"
        wait_http(url, 120)
        rows.append(summarize("baseline", http_latency(url, args.requests, args.warmup)))
    finally:
        baseline.terminate()
        baseline.wait(30)

    import ray

    from cluster import launcher
    from cluster.source import ModelSource
    from deployments.router import NAMESPACE
    port = free_port()
    started = time.monotonic()
    ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    manager = launcher.start([ModelSource("half_plus_two", str(MODEL))],
                             launcher.ServerOptions(rest_api_host="127.0.0.1", rest_api_port=port))
    launcher.wait_initial_load(manager, ["half_plus_two"], 300)
    ready_s = time.monotonic() - started
    try:
        url = f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict"
        rows.append(summarize("aspire", http_latency(url, args.requests, args.warmup)))
    finally:
        launcher.stop(manager)
        ray.shutdown()
    by = {r["target"]: r for r in rows}
    print(f"start to first AVAILABLE version (ray.init + Serve + manager + router + load): {ready_s:.1f} s")
    for p in ("p50_ms", "p99_ms"):
        print(f"ratio {p}: aspire/baseline = {by['aspire'][p] / by['baseline'][p]:.2f}x, "
              f"aspire/direct = {by['aspire'][p] / by['direct'][p]:.1f}x")


if __name__ == "__main__":
    main()
