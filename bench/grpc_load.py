"""Closed-loop gRPC load for bench/suite.py: CONCURRENCY callers on one channel, each sending the
next request when its answer arrives, for DURATION seconds. The request is serialized once and
sent as raw bytes, so the client spends its CPU on gRPC, not on protobuf.

Usage: python bench/grpc_load.py TARGET METHOD REQUEST_FILE CONCURRENCY DURATION_S
With BENCH_GRPC_CA set (a CA certificate file), the channel is TLS, verified against it.
Prints one JSON line: requests, errors, duration_s, latencies_ms (sorted sample of all).
"""

import asyncio
import json
import os
import sys
import time

import grpc


async def main(
    target: str, method: str, request: bytes, concurrency: int, duration_s: float
) -> dict:
    latencies, errors = [], []
    ca = os.environ.get("BENCH_GRPC_CA")
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.aio.secure_channel(target, credentials)
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        call = channel.unary_unary(method)  # bytes in, bytes out
        await call(request, timeout=60)  # connect before the clock starts
        deadline = time.perf_counter() + duration_s

        async def caller():
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await call(request, timeout=60)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as err:
                    errors.append(err.code().name)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "duration_s": elapsed,
        "latencies_ms": sorted(x * 1000 for x in latencies),
    }


if __name__ == "__main__":
    target, method, path, concurrency, duration = sys.argv[1:6]
    with open(path, "rb") as f:
        body = f.read()
    print(json.dumps(asyncio.run(main(target, method, body, int(concurrency), float(duration)))))
