"""Aspire against baselines, in one run on one machine: `make bench` (or `make bench-smoke`).

Systems, each started alone (nothing else serving while it is measured):
  a  in-process   the loaded model's session called in a loop: the floor (concurrency 1 only)
  b  fastapi      one uvicorn + FastAPI process holding the models (bench/baseline_server.py)
  c  ray-serve    a minimal hand-written Ray Serve app behind Serve's proxy (bench/serve_app.py)
  d  aspire-rest  `aspire serve`, REST
  e  aspire-grpc  `aspire serve`, gRPC PredictionService/Predict (same server as d)
  f  aspire-batch `aspire serve --enable_batching`, REST
  g  aspire-v2    `aspire serve`, the Open Inference Protocol's REST infer, JSON tensors (same
                  server as d)
  h  aspire-v2g   `aspire serve`, the Open Inference Protocol's gRPC ModelInfer, raw contents
                  (same server as d)
  i  aspire-https `aspire serve --ssl_config_file`, REST over TLS (at the lowest and highest
                  concurrency only: the cost of TLS is read against d)
  j  aspire-grpcs the same TLS server, gRPC Predict over TLS (read against e)
  k  aspire-rtls  `aspire serve` on a Ray started with Ray's TLS settings (RAY_USE_TLS): REST in
                  plain, the direct path router -> replica in mutual TLS (read against d)
  l  aspire-shadow `aspire serve` with a rollout in its shadow phase: every request copied to
                  a candidate (the same model as version 2), answers compared (read against d)
  m  aspire-shdfull the same with `max_pending` 0: every copy dropped, a full shadow queue
                  (read against d)
Models: half_plus_two (TF Serving's test model: per-request overhead), and two MLPs exported by
bench/models.py, one 784-float row per request: 784-1024-1024-10 (light compute) and
784-4096-4096-10 (milliseconds per row, little more per batch: where batching should pay).

Load: closed loop at each concurrency for a fixed duration. REST uses Debian's `wrk` (one thread,
C, a Lua script for the POST body; installed with apt-get on first use); gRPC uses
bench/grpc_load.py (grpc.aio, pre-serialized request). The client's own CPU time is reported: it
runs on the same cores as the server.

Also: the resident memory (RSS) of one Aspire replica per model against the model's size, and
bench/reconcile.py (the Manager's reconcile step at 1,000 models x 3 versions).

Writes bench/results/<UTC time>.md and the summary between the markers in bench/README.md.
`--smoke` (CI): 1 s per point, concurrency 1, results to a temp dir, README untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import models as bench_models  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

PY = sys.executable
ASPIRE = str(Path(PY).parent / "aspire")
SYSTEMS = {
    "a": "in-process",
    "b": "fastapi",
    "c": "ray-serve",
    "d": "aspire-rest",
    "e": "aspire-grpc",
    "f": "aspire-batch",
    "g": "aspire-v2",
    "h": "aspire-v2g",
    "i": "aspire-https",
    "j": "aspire-grpcs",
    "k": "aspire-rtls",
    "l": "aspire-shadow",
    "m": "aspire-shdfull",
}
TLS_PAIRS = (
    ("i", "d"),
    ("j", "e"),
    ("k", "d"),
)  # (over TLS, the same API in plain) in the same run
# (shadowing, the same REST API without a rollout) in the same run: (l) a rollout's shadow
# phase copies 100 % of the requests to a candidate (the same model as version 2); (m) the
# same with `max_pending` 0, so that every copy is dropped: what a full shadow queue costs
SHADOW_PAIRS = (("l", "d"), ("m", "d"))
README_BEGIN, README_END = "<!-- suite:begin -->", "<!-- suite:end -->"
BATCHING = """max_batch_size { value: 32 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    from tests.support.debian import apt_install, ensure_binary

    return ensure_binary(
        "wrk", lambda: shutil.which("wrk"), lambda deadline: apt_install("wrk", deadline)
    )


def run_measured(
    cmd: list[str], env: dict | None = None, timeout_s: float = 600
) -> tuple[str, float]:
    """Run a client to completion; its stdout and the CPU seconds it used (user + system)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return out, usage.ru_utime + usage.ru_stime


def wrk_point(
    wrk: str, script: Path, url: str, body: Path, concurrency: int, duration_s: float
) -> dict:
    out, cpu = run_measured(
        [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        env={**os.environ, "BENCH_BODY": str(body)},
    )
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, duration_us, connect, read, write, status, timeout, p50, p90, p99 = map(
        int, m.group(1).split()
    )
    seconds = duration_us / 1e6
    return {
        "requests": n,
        "rps": n / seconds,
        "p50": p50 / 1000,
        "p90": p90 / 1000,
        "p99": p99 / 1000,
        "errors": connect + read + write + status + timeout,
        "client_cpu": 100 * cpu / seconds,
    }


PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_point(
    target: str,
    request: Path,
    concurrency: int,
    duration_s: float,
    method: str = PREDICT,
    ca: Path | None = None,
) -> dict:
    out, cpu = run_measured(
        [
            PY,
            str(ROOT / "bench" / "grpc_load.py"),
            target,
            method,
            str(request),
            str(concurrency),
            str(duration_s),
        ],
        env={**os.environ, "BENCH_GRPC_CA": str(ca)} if ca else None,
    )
    r = json.loads(out.strip().splitlines()[-1])
    ms = r["latencies_ms"] or [float("nan")]
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]  # noqa: E731
    return {
        "requests": r["requests"],
        "rps": r["requests"] / r["duration_s"],
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "errors": r["errors"],
        "client_cpu": 100 * cpu / r["duration_s"],
    }


def in_process_point(path: str, inputs: dict, duration_s: float) -> dict:
    """The floor: the session run of one request's tensors, in a loop, in this process."""
    from deployments.replica.loader import SavedModelLoader

    model = SavedModelLoader(path).load()
    for _ in range(20):
        model.run("serving_default", inputs)
    samples, deadline = [], time.perf_counter() + duration_s
    cpu = time.process_time()
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        model.run("serving_default", inputs)
        samples.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    model.unload()
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]  # noqa: E731
    return {
        "requests": len(samples),
        "rps": len(samples) / elapsed,
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "errors": 0,
        "client_cpu": 100 * cpu / elapsed,
    }


class Server:
    """A server process in its own session: started, waited for, stopped (SIGINT, then the
    whole process group is killed so no Ray process outlives it)."""

    def __init__(
        self, cmd: list[str], ready, what: str, timeout_s: float = 300, env: dict | None = None
    ):
        self.what = what
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd,
            env=None if env is None else {**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        while not ready(self):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not start:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-lines:])

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        stop_server(self.proc, 90)


def stop_server(proc: subprocess.Popen, grace_s: float) -> None:
    """Ctrl-C a server started in its own process group, wait up to `grace_s` for its clean
    stop, then SIGKILL whatever of the group is left (Ray's daemons of an embedded cluster)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tree_cpu_ticks(root: int) -> dict[int, int]:
    """utime + stime (clock ticks) of `root` and every process below it, or in its session:
    Ray's own daemons (GCS, raylet, workers) are part of a server's cost."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # after the command: state ppid pgrp session ... utime(12) stime(13)
            stats[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]))
    session = stats.get(root, (0, -1, 0))[1]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid, _t) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    tree |= {pid for pid, (_p, sid, _t) in stats.items() if sid == session and session > 0}
    return {pid: stats[pid][2] for pid in tree if pid in stats}


class ServerCpu:
    """CPU seconds the server's processes spent between `start()` and `stop()`."""

    TICK_S = 1 / os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int | None):
        self.pid, self.before = pid, {}

    def start(self) -> None:
        if self.pid is not None:
            self.before = _tree_cpu_ticks(self.pid)

    def stop(self) -> float | None:
        if self.pid is None:
            return None
        after = _tree_cpu_ticks(self.pid)
        return sum(t - self.before.get(pid, 0) for pid, t in after.items()) * self.TICK_S


def answers(url: str, body: bytes, verify: bool | str = True) -> bool:
    try:
        return (
            requests.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=5,
                verify=verify,
            ).status_code
            == 200
        )
    except requests.RequestException:
        return False


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def pids_titled(prefix: str) -> list[int]:
    """Processes whose title (Ray sets `ray::ActorClass...`) starts with `prefix`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(prefix):
                found.append(int(entry))
    return sorted(found)


def machine() -> str:
    import ray
    import tensorflow as tf

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}, Ray {ray.__version__}, "
        f"TensorFlow {tf.__version__} (CPU)"
    )


def commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


class Suite:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.memory: list[dict] = []
        self.work = Path(tempfile.mkdtemp(prefix="aspire-bench-"))
        self.models = bench_models.prepare(self.work, [m for m in args.models])
        self.wrk = ensure_wrk()
        self.script = self.work / "post.lua"
        self.script.write_text(WRK_SCRIPT)

    def measure(self, server_pid: int | None, point_fn) -> dict:
        """Run one load point; adds the server's CPU seconds per request (all its processes)."""
        cpu = ServerCpu(server_pid)
        cpu.start()
        point = point_fn()
        seconds = cpu.stop()
        point["server_cpu_ms"] = (
            1000 * seconds / point["requests"]
            if seconds is not None and point["requests"]
            else None
        )
        return point

    def record(self, model: str, system: str, concurrency: int, point: dict) -> None:
        row = {"model": model, "system": system, "concurrency": concurrency, **point}
        self.rows.append(row)
        print(
            f"{model:13s} {SYSTEMS[system]:12s} c={concurrency:<3d} {point['rps']:8.1f} req/s  "
            f"p50 {point['p50']:7.2f} ms  p90 {point['p90']:7.2f}  p99 {point['p99']:7.2f}  "
            f"errors {point['errors']}  client CPU {point['client_cpu']:.0f}%  server CPU/request "
            f"{_ms(point.get('server_cpu_ms'))}",
            flush=True,
        )

    def concurrency_of(self, system: str) -> list[int]:
        """TLS systems run at the lowest and highest concurrency only (their cost is a ratio);
        shadowing at 1 and 8 (where its target is set), or at the lowest where neither runs."""
        levels = self.args.concurrency
        if system in "lm":
            return [c for c in levels if c in (1, 8)] or [min(levels)]
        return sorted({min(levels), max(levels)}) if system in "ijk" else levels

    def sweep_rest(
        self,
        system: str,
        url_of,
        server_pid: int | None = None,
        v2: bool = False,
        verify: bool | str = True,
    ) -> None:
        for name, m in self.models.items():
            body_path = m.v2_body_path if v2 else m.body_path
            if not answers(url_of(name), body_path.read_bytes(), verify):
                raise RuntimeError(f"{SYSTEMS[system]} does not answer {name}")
            for c in self.concurrency_of(system):
                self.record(
                    name,
                    system,
                    c,
                    self.measure(
                        server_pid,
                        lambda name=name, body=body_path, c=c: wrk_point(
                            self.wrk, self.script, url_of(name), body, c, self.args.duration
                        ),
                    ),
                )

    def run(self) -> None:
        sel = self.args.systems
        if "a" in sel:
            for name, m in self.models.items():
                self.record(
                    name, "a", 1, in_process_point(m.version_dir, m.inputs, self.args.duration)
                )
        if "b" in sel:
            self.baseline()
        if "c" in sel:
            self.serve_app()
        if any(system in sel for system in "degh"):
            self.aspire(batching=False)
        if "f" in sel:
            self.aspire(batching=True)
        if "i" in sel or "j" in sel:
            self.aspire(batching=False, tls=True)
        if "k" in sel:
            self.aspire(batching=False, ray_tls=True)
        if "l" in sel:
            self.aspire(batching=False, shadow_pending=64)
        if "m" in sel:
            self.aspire(batching=False, shadow_pending=0)

    def model_args(self) -> list[str]:
        return [f"{n}={m.version_dir}" for n, m in self.models.items()]

    def baseline(self) -> None:
        port = free_port()
        url_of = lambda n: f"http://127.0.0.1:{port}/v1/models/{n}:predict"  # noqa: E731
        first = next(iter(self.models))
        server = Server(
            [PY, "bench/baseline_server.py", str(port), *self.model_args()],
            lambda s: answers(url_of(first), self.models[first].body_path.read_bytes()),
            "the FastAPI baseline",
        )
        try:
            self.sweep_rest("b", url_of, server.proc.pid)
            self.memory.append(
                {
                    "what": "FastAPI baseline process (all models)",
                    "rss": rss_bytes(server.proc.pid),
                    "model_bytes": sum(m.size_bytes for m in self.models.values()),
                }
            )
        finally:
            server.stop()

    def serve_app(self) -> None:
        port = free_port()
        url_of = lambda n: f"http://127.0.0.1:{port}/v1/models/{n}:predict"  # noqa: E731
        server = Server(
            [PY, "bench/serve_app.py", str(port), *self.model_args()],
            lambda s: "READY" in s.output(),
            "the Ray Serve app",
        )
        try:
            self.sweep_rest("c", url_of, server.proc.pid)
        finally:
            server.stop()

    def sweep_grpc(
        self, system: str, port: int, server_pid: int, method: str, ca: Path | None = None
    ) -> None:
        for name, m in self.models.items():
            request = m.v2_grpc_path if method == MODEL_INFER else m.grpc_path
            for c in self.concurrency_of(system):
                self.record(
                    name,
                    system,
                    c,
                    self.measure(
                        server_pid,
                        lambda request=request, c=c: grpc_point(
                            f"127.0.0.1:{port}", request, c, self.args.duration, method, ca
                        ),
                    ),
                )

    def ssl_config(self) -> Path:
        """TF Serving's SSLConfig with a fresh test CA's server certificate, inline PEM."""
        from tests.support.certs import CertAuthority

        ca = CertAuthority.create(self.work / "tls")
        server = ca.issue(self.work / "tls", "server")
        config = self.work / "tls" / "ssl_config.txt"
        config.write_text(
            f"server_key: {json.dumps(server.key_pem())}\n"
            f"server_cert: {json.dumps(server.cert_pem())}\n"
        )
        self.tls_ca = ca.cert
        return config

    def ray_tls_env(self) -> dict:
        """Ray's TLS settings with a fresh test CA's certificate for this node."""
        import ray.util

        from tests.support.certs import CertAuthority

        folder = self.work / "ray_tls"
        ca = CertAuthority.create(folder)
        node = ca.issue(
            folder, "node", hosts=("127.0.0.1", "localhost", ray.util.get_node_ip_address())
        )
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(node.cert),
            "RAY_TLS_SERVER_KEY": str(node.key),
            "RAY_TLS_CA_CERT": str(ca.cert),
        }

    def aspire(
        self,
        batching: bool,
        tls: bool = False,
        ray_tls: bool = False,
        shadow_pending: int | None = None,
    ) -> None:
        port, grpc_port = free_port(), free_port()
        config = self.work / "models.config"
        bases = {n: m.base_path for n, m in self.models.items()}
        policy = ""
        if shadow_pending is not None:  # version 2, the candidate, is the same model
            policy = " model_version_policy { all {} }"
            for n, m in self.models.items():
                bases[n] = self.work / f"shadow-{n}"
                bases[n].mkdir(exist_ok=True)
                for version in ("1", "2"):  # copies: a version may not link out of its base
                    if not (bases[n] / version).exists():
                        shutil.copytree(m.version_dir, bases[n] / version)
        config.write_text(
            "model_config_list {\n"
            + "".join(
                f'config {{ name: "{n}" base_path: "{bases[n]}" '
                f'model_platform: "tensorflow"{policy} }}\n'
                for n in self.models
            )
            + "}\n"
        )
        flags = [
            f"--model_config_file={config}",
            f"--rest_api_port={port}",
            f"--port={grpc_port}",
            "--rest_api_host=127.0.0.1",
        ]
        if tls:
            flags.append(f"--ssl_config_file={self.ssl_config()}")
        if shadow_pending is not None:
            side = self.work / "aspire.json"
            # a shadow phase that never ends: no window is ever judged (min_requests)
            shadow = {"percent": 100, "duration_s": 1, "max_pending": shadow_pending}
            rollout = {
                "candidate": 2,
                "shadow": shadow,
                "analysis": {"interval_s": 3600, "min_requests": 10**9},
            }
            side.write_text(json.dumps({"models": {n: {"rollout": rollout} for n in self.models}}))
            flags.append(f"--aspire_config_file={side}")
        if batching:
            params = self.work / "batching.txt"
            params.write_text(BATCHING)
            flags += ["--enable_batching", f"--batching_parameters_file={params}"]
        scheme = "https" if tls else "http"
        url_of = lambda n: f"{scheme}://127.0.0.1:{port}/v1/models/{n}:predict"  # noqa: E731
        server = Server(
            [ASPIRE, "serve", *flags],
            lambda s: "Exporting HTTP/REST API" in s.output(),
            "aspire serve" + (" --enable_batching" if batching else ""),
            env=self.ray_tls_env() if ray_tls else None,
        )
        try:
            if batching:
                self.sweep_rest("f", url_of, server.proc.pid)
                return
            if shadow_pending is not None:
                for name in self.models:
                    wait_shadowing(f"http://127.0.0.1:{port}", name)
                self.sweep_rest("l" if shadow_pending else "m", url_of, server.proc.pid)
                return
            if ray_tls:
                self.sweep_rest("k", url_of, server.proc.pid)
                return
            if tls:
                if "i" in self.args.systems:
                    self.sweep_rest("i", url_of, server.proc.pid, verify=str(self.tls_ca))
                if "j" in self.args.systems:
                    self.sweep_grpc("j", grpc_port, server.proc.pid, PREDICT, self.tls_ca)
                return
            if "d" in self.args.systems:
                self.sweep_rest("d", url_of, server.proc.pid)
            if "g" in self.args.systems:
                v2_url = lambda n: f"http://127.0.0.1:{port}/v2/models/{n}/infer"  # noqa: E731
                self.sweep_rest("g", v2_url, server.proc.pid, v2=True)
            for system, method in (("e", PREDICT), ("h", MODEL_INFER)):
                if system in self.args.systems:
                    self.sweep_grpc(system, grpc_port, server.proc.pid, method)
            for what, title in (
                ("Aspire manager actor", "ray::ManagerActor"),
                ("Aspire router replica", "ray::ServeReplica:aspire-router-"),
            ):
                for pid in pids_titled(title):
                    self.memory.append({"what": what, "rss": rss_bytes(pid), "model_bytes": 0})
            described = requests.get(f"http://127.0.0.1:{port}/v1/aspire/status", timeout=30).json()
            for name, m in self.models.items():
                for version, placements in described["placements"].get(name, {}).items():
                    for p in placements:
                        self.memory.append(
                            {
                                "what": f"Aspire replica of {name} v{version}",
                                "rss": rss_bytes(p["pid"]),
                                "model_bytes": m.size_bytes,
                            }
                        )
        finally:
            server.stop()


# ------------------------------------------------------------------------------------ report


def wait_shadowing(url: str, name: str, timeout_s: float = 120) -> None:
    """Wait until the rollout of `name` is in its shadow phase (both versions AVAILABLE)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/v1/models/{name}/rollout", timeout=30)
        if r.status_code == 200 and r.json()["phase"] == "shadow":
            return
        time.sleep(0.2)
    raise RuntimeError(f"the rollout of {name} never reached its shadow phase")


def by_key(rows: list[dict]) -> dict:
    return {(r["model"], r["system"], r["concurrency"]): r for r in rows}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}x" if x and y else "n/a"


def targets(
    rows: list[dict], reconcile: dict | None, concurrency: list[int], memory: list[dict] = ()
) -> list[str]:
    """The issue's targets, each computed from this run, met or not."""
    k = by_key(rows)
    get = lambda m, s, c, f: k.get((m, s, c), {}).get(f)  # noqa: E731
    out = []

    def check(label, value, bound, fmt, better="<="):
        if value is None:
            return out.append(f"- {label}: not measured in this run")
        ok = value <= bound if better == "<=" else value >= bound
        out.append(
            f"- {label}: {fmt(value)} (target {better} {fmt(bound)}): "
            f"**{'met' if ok else 'missed'}**"
        )

    hpt, top = "half_plus_two", max(concurrency)

    def over_b(model, system, c, field):
        pair = get(model, system, c, field), get(model, "b", c, field)
        return pair[0] / pair[1] if all(pair) else None

    x = lambda v: f"{v:.2f}x"  # noqa: E731
    for api, system in (
        ("REST", "d"),
        ("gRPC", "e"),
        ("v2 (Open Inference Protocol)", "g"),
        ("v2 gRPC", "h"),
    ):
        check(
            f"{api} p50 at concurrency 1, half_plus_two, Aspire / FastAPI",
            over_b(hpt, system, 1, "p50"),
            3.0,
            x,
        )
    check(
        f"throughput at concurrency {top}, half_plus_two, Aspire REST / FastAPI",
        over_b(hpt, "d", top, "rps"),
        0.5,
        x,
        ">=",
    )
    check(
        f"throughput at concurrency {top}, mlp, Aspire REST / FastAPI",
        over_b("mlp", "d", top, "rps"),
        0.8,
        x,
        ">=",
    )
    check(
        f"throughput at concurrency {top}, mlp_wide (compute-bound), "
        "Aspire with batching / FastAPI",
        over_b("mlp_wide", "f", top, "rps"),
        2.0,
        x,
        ">=",
    )
    for model in dict.fromkeys(r["model"] for r in rows):
        for c in concurrency:
            pair = get(model, "d", c, "rps"), get(model, "c", c, "rps")
            check(
                f"throughput at concurrency {c}, {model}, Aspire REST / Ray Serve app",
                pair[0] / pair[1] if all(pair) else None,
                2.0,
                x,
                ">=",
            )
    mib = lambda v: f"{v:.0f} MiB"  # noqa: E731
    for what, bound in (("Aspire manager actor", 250), ("Aspire router replica", 250)):
        sizes = [m["rss"] / 2**20 for m in memory if m["what"] == what]
        check(f"RSS of the {what[7:]}", max(sizes) if sizes else None, bound, mib)
    beyond = [
        (m["rss"] - m["model_bytes"]) / 2**20 for m in memory if m["what"].startswith("Aspire rep")
    ]
    check("a version replica's RSS beyond its model", max(beyond) if beyond else None, 450, mib)
    for system, words in (("l", "shadowing 100 %"), ("m", "a full shadow queue")):
        for c in (1, 8):
            pair = get(hpt, system, c, "p50"), get(hpt, "d", c, "p50")
            check(
                f"p50 at concurrency {c}, half_plus_two, with {words} / without a rollout",
                pair[0] / pair[1] if all(pair) else None,
                1.10,
                x,
            )
    if reconcile:
        check(
            f"reconcile pass, {reconcile['models']} models x {reconcile['versions']} versions "
            "(slowest pass, wall)",
            reconcile["max_wall_ms"],
            100.0,
            lambda v: f"{v:.1f} ms",
        )
    return out


def tls_cost(rows: list[dict]) -> list[str]:
    """TLS against plain, the same API of the same code in the same run."""
    return pair_table(
        rows,
        TLS_PAIRS,
        "**The cost of TLS** (over TLS / plain: (i) and (j) `--ssl_config_file` on the ports, "
        "(k) Ray's TLS settings, which put the direct path in mutual TLS)",
    )


def shadow_cost(rows: list[dict]) -> list[str]:
    """Shadowing against no rollout, the same REST API in the same run."""
    return pair_table(
        rows,
        SHADOW_PAIRS,
        "**The cost of shadow traffic** (a rollout's shadow phase / no rollout: (l) 100 % of "
        "the requests copied to a candidate, (m) every copy dropped, the queue being full)",
    )


def pair_table(rows: list[dict], pairs: tuple, heading: str) -> list[str]:
    k = by_key(rows)
    table = []
    for model, system, c in ((r["model"], r["system"], r["concurrency"]) for r in rows):
        plain = dict(pairs).get(system)
        if plain and (model, plain, c) in k:
            t, p = k[(model, system, c)], k[(model, plain, c)]
            table.append(
                f"| {model} | ({system}) / ({plain}) | {c} | {ratio(t['p50'], p['p50'])} | "
                f"{ratio(t['p99'], p['p99'])} | {ratio(t['rps'], p['rps'])} | "
                f"{ratio(t.get('server_cpu_ms'), p.get('server_cpu_ms'))} |"
            )
    if not table:
        return []
    return [
        heading,
        "",
        "| model | systems | conc. | p50 | p99 | req/s | server CPU / req |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
    ]


def markdown(rows, memory, reconcile, args, started: str, host: str, rev: str) -> str:
    k = by_key(rows)
    lines = [
        f"Run {started} UTC, commit {rev}, on {host}.",
        f"Command: `{' '.join(['bench/suite.py', *sys.argv[1:]])}`; {args.duration:g} s per point, "
        "closed loop; the client runs on the same machine.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [
            f"**{model}**",
            "",
            "| system | conc. | req/s | p50 ms | p90 ms | p99 ms | errors | client CPU | "
            "server CPU / req | p50 / (b) | req/s / (b) | req/s / (c) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["model"] == model):
            b = k.get((model, "b", r["concurrency"]), {})
            c = k.get((model, "c", r["concurrency"]), {})
            lines.append(
                f"| ({r['system']}) {SYSTEMS[r['system']]} | {r['concurrency']} | {r['rps']:.0f} | "
                f"{r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['errors']} | "
                f"{r['client_cpu']:.0f}% | {_ms(r.get('server_cpu_ms'))} | "
                f"{ratio(r['p50'], b.get('p50'))} | "
                f"{ratio(r['rps'], b.get('rps'))} | {ratio(r['rps'], c.get('rps'))} |"
            )
        lines.append("")
    if memory:
        lines += [
            "**Resident memory**",
            "",
            "| process | RSS | model on disk | RSS - model |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {m['what']} | {m['rss'] / 2**20:.0f} MiB | {m['model_bytes'] / 2**20:.1f} MiB | "
            f"{(m['rss'] - m['model_bytes']) / 2**20:.0f} MiB |"
            for m in memory
        ]
        lines.append("")
    if reconcile:
        lines += [
            f"**Reconcile** ({reconcile['models']} models x {reconcile['versions']} versions, fake "
            f"loaders, admission on): first pass {reconcile['first_pass_ms']:.1f} ms, slowest "
            f"pass {reconcile['max_wall_ms']:.1f} ms wall ({reconcile['max_cpu_ms']:.1f} ms CPU), "
            f"steady state {reconcile['idle_pass_ms']:.2f} ms.",
            "",
        ]
    lines += tls_cost(rows)
    lines += shadow_cost(rows)
    lines += ["**Targets**", "", *targets(rows, reconcile, args.concurrency, memory), ""]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = ROOT / "bench" / "README.md"
    body = readme.read_text()
    if README_BEGIN not in body:
        raise RuntimeError(f"bench/README.md has no {README_BEGIN} marker")
    head, rest = body.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{text}\n{README_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated")
    parser.add_argument("--models", default="half_plus_two,mlp,mlp_wide", help="comma-separated")
    parser.add_argument("--systems", default="abcdefghijklm", help="letters a-m")
    parser.add_argument("--reconcile-models", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md as it is")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI: 1 s per point, concurrency 1, 50 models in the reconcile run, "
        "results to a temp dir, README untouched",
    )
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.concurrency, args.reconcile_models = 1.0, "1", 50
        args.out = tempfile.mkdtemp(prefix="aspire-bench-smoke-")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    host, rev = machine(), commit()
    print(f"machine: {host}\ncommit: {rev}", flush=True)
    suite = Suite(args)
    try:
        suite.run()
    finally:
        shutil.rmtree(suite.work, ignore_errors=True)
    reconcile = None
    if args.reconcile_models:  # in a fresh process, as in the manager actor (not this one, which
        # now holds TensorFlow and its models: its garbage collections would be timed too)
        out, _ = run_measured(
            [
                PY,
                str(ROOT / "bench" / "reconcile.py"),
                "--json",
                "--models",
                str(args.reconcile_models),
            ]
        )
        reconcile = json.loads(out.strip().splitlines()[-1])
    text = markdown(suite.rows, suite.memory, reconcile, args, started, host, rev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (started.replace(" ", "-").replace(":", "") + ".md")
    path.write_text(f"# Benchmark run {started} UTC\n\n{text}")
    print(f"\n{text}\nwritten to {path}")
    if not args.smoke and not args.no_readme:
        update_readme(text)
        print("bench/README.md updated")


if __name__ == "__main__":
    main()
