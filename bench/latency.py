"""Latency of half_plus_two predict: Aspire (REST and gRPC) against baselines in the same run.

  direct      : the loaded model called in-process (no network): the floor
  baseline    : one FastAPI/uvicorn process holding the model (bench/baseline_server.py)
  aspire-rest : Aspire's REST API on an embedded Ray (Serve proxy -> router -> version deployment)
  aspire-grpc : Aspire's gRPC API, the stock PredictionServiceStub (same path, gRPC proxy)

Sequential: one client, one request at a time. Concurrent: `--clients` threads, each with its own
connection, sending sequentially; reports latency and throughput. Prints the ratios and the time
from start to the first AVAILABLE version. Usage: .venv/bin/python bench/latency.py [--requests N]
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
    print(f"{name:11s} n={row['n']:5d} mean={row['mean_ms']:7.3f} ms  p50={row['p50_ms']:7.3f}  "
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


def grpc_latency(target: str, n: int, warmup: int) -> list[float]:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(BODY["instances"], np.float32)))
    for _ in range(warmup):
        assert list(stub.Predict(request, timeout=30).outputs["y"].float_val) == EXPECTED["predictions"]
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        stub.Predict(request, timeout=30)
        samples.append(time.perf_counter() - t)
    return samples


def concurrent(fn, clients: int, n_each: int) -> tuple[list[float], float]:
    """Run `fn(n_each, 0)` on `clients` threads at once; all samples and requests per second."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda _: fn(n_each, 0), range(clients)))
        elapsed = time.perf_counter() - started
    samples = [s for r in results for s in r]
    return samples, len(samples) / elapsed


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
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"python {platform.python_version()}")
    rows = [summarize("direct", direct_latency(args.requests, args.warmup))]

    port = free_port()
    baseline = subprocess.Popen([sys.executable, str(ROOT / "bench" / "baseline_server.py"),
                                 "half_plus_two", str(MODEL / "00000123"), str(port)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base_url = f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict"
        wait_http(base_url, 120)
        rows.append(summarize("baseline", http_latency(base_url, args.requests, args.warmup)))
        samples, rps = concurrent(lambda n, w: http_latency(base_url, n, w), args.clients,
                                  max(1, args.requests // args.clients))
        rows.append(summarize(f"base-x{args.clients}", samples))
        throughput = {"baseline": rps}
    finally:
        baseline.terminate()
        baseline.wait(30)

    import ray

    from cluster import launcher
    from cluster.controller import ControllerConfig
    from cluster.source import ModelSource
    from deployments.router import NAMESPACE
    port, grpc_port = free_port(), free_port()
    started = time.monotonic()
    ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    manager = launcher.start(ControllerConfig(models=[ModelSource("half_plus_two", str(MODEL))]),
                             launcher.ServerOptions(rest_api_host="127.0.0.1", rest_api_port=port,
                                                    grpc_port=grpc_port))
    launcher.wait_initial_load(manager, ["half_plus_two"], 300)
    ready_s = time.monotonic() - started
    url = f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict"
    target = f"127.0.0.1:{grpc_port}"
    try:
        rows.append(summarize("aspire-rest", http_latency(url, args.requests, args.warmup)))
        rows.append(summarize("aspire-grpc", grpc_latency(target, args.requests, args.warmup)))
        n_each = max(1, args.requests // args.clients)
        for name, fn in (("rest", lambda n, w: http_latency(url, n, w)),
                         ("grpc", lambda n, w: grpc_latency(target, n, w))):
            samples, rps = concurrent(fn, args.clients, n_each)
            rows.append(summarize(f"{name}-x{args.clients}", samples))
            throughput[name] = rps
    finally:
        launcher.stop(manager)
        ray.shutdown()
    by = {r["target"]: r for r in rows}
    print(f"start to first AVAILABLE version (ray.init + Serve + manager + router + load): {ready_s:.1f} s")
    for name, rps in throughput.items():
        print(f"concurrent {name} with {args.clients} clients: {rps:.0f} requests/s")
    for p in ("p50_ms", "p99_ms"):
        print(f"ratio {p}: aspire-rest/baseline = {by['aspire-rest'][p] / by['baseline'][p]:.2f}x, "
              f"aspire-grpc/baseline = {by['aspire-grpc'][p] / by['baseline'][p]:.2f}x, "
              f"aspire-grpc/aspire-rest = {by['aspire-grpc'][p] / by['aspire-rest'][p]:.2f}x, "
              f"aspire-rest/direct = {by['aspire-rest'][p] / by['direct'][p]:.1f}x")

if __name__ == "__main__":
    main()
