"""Soak: mixed REST, gRPC and v2 load on several models for a long run, with version rollouts and
replica kills, watching failed requests, latency per window and every server process's memory
and open file descriptors over time. Not part of `make test` or `make bench`.

One `aspire serve` (started here, on free ports) serves three models, each version with
`--replicas` replicas (2 by default, so a killed replica's requests have somewhere to go), each
reserving `--cpus-per-replica` of Ray's CPUs (0.1: with the flag's default, 0.25, a 2-CPU machine
has no CPU left for a rollout's new replicas):
  hpt_a, hpt_b  TF Serving's half_plus_two (y = x / 2 + 2), under two names
  hp3           TF Serving's half_plus_three (y = x / 2 + 3)
Load: for each protocol one process of `--clients` closed-loop clients, each client cycling
through the models and checking every answer's values:
  rest    TF Serving's REST predict     POST /v1/models/NAME:predict, {"instances": [1, 2, 5]}
  grpc    TF Serving's gRPC Predict     PredictionService/Predict (raw bytes on one channel)
  v2      Open Inference Protocol, REST POST /v2/models/NAME/infer, JSON tensors
  v2grpc  Open Inference Protocol, gRPC GRPCInferenceService/ModelInfer, raw contents
Events (each every N seconds, the first at N / 2, models in turn):
  kill     SIGKILL one replica process of a model's newest version (found by its Ray process
           title); the time until a replacement is running is recorded.
  rollout  the model's newest version directory copied to version N + 1 (renamed into place, so
           the source never sees half a copy); Aspire's source loads it and, availability
           preserving, unloads N. The times until N + 1 is AVAILABLE and N is END are recorded.
Every `--sample-every-s`: RSS (VmRSS) and open fds of every process of the server (its process
tree and session: `aspire serve`, GCS, raylet, dashboard and agents, Serve's controller, the
routers, the version replicas, the manager actor, idle workers), summed by role.

Report (printed, and written to bench/results/soak-<UTC time>.md with the raw figures beside it
as .json and `aspire serve`'s output as .log):
- per protocol: requests, req/s, failed, p50/p99 per window (min / median / max over windows);
- failed requests, classified: in flight at a kill of a replica of the same model (sent before
  it, answered after), sent within `--near-s` after such a kill, during a rollout of the same
  model (from the new directory until the old version is END, plus `--near-s`), or other; with
  the number that could be in flight at the kills (kills x all clients);
- per window: req/s, p50, p99 per protocol, failures, events;
- per role: process count, RSS and fds at the start, the end, the maximum, and the least-squares
  slope per hour over the samples after the first window (the warm-up is left out).

Exit status 1 when a request failed other than in flight at a kill, when more failed at kills
than could have been in flight, or when the server stopped during the run.

Usage: python bench/soak.py [--minutes 30] [--window-s 60] [--kill-every-s 180]
       [--rollout-every-s 240] [--clients 2] [--replicas 2] [--cpus-per-replica 0.1]
       [--protocols rest,grpc,v2,v2grpc] [--sample-every-s 10] [--near-s 5] [--out DIR]
`--minutes 3` is a quick check (one kill at 90 s, one rollout at 120 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.suite import stop_server  # noqa: E402
from core.names import app_name  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DATA = ROOT / "tests" / "data"
MODELS = {  # name -> (test model directory, y = x / 2 + offset)
    "hpt_a": ("saved_model_half_plus_two_cpu", 2.0),
    "hpt_b": ("saved_model_half_plus_two_cpu", 2.0),
    "hp3": ("saved_model_half_plus_three", 3.0),
}
X = (1.0, 2.0, 5.0)
PROTOCOLS = ("rest", "grpc", "v2", "v2grpc")
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
REQUEST_TIMEOUT_S = 30.0
MIB = 1024 * 1024

IN_FLIGHT_AT_KILL = "in flight at a kill"
AFTER_KILL = "sent just after a kill"
DURING_ROLLOUT = "during a rollout"
OTHER = "other"
CATEGORIES = (IN_FLIGHT_AT_KILL, AFTER_KILL, DURING_ROLLOUT, OTHER)


# ----------------------------------------------------------------------------- pure figures


def expected(model: str) -> list[float]:
    """The values every answer for `model` must carry, for the inputs X."""
    return [x / 2 + MODELS[model][1] for x in X]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (0..1) of `values` (sorted here), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per hour; None with fewer than
    two distinct times."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


@dataclass
class Failure:
    """A request that got no correct answer. Times are time.monotonic() (system-wide on Linux,
    so the load processes' times and this process's compare)."""

    protocol: str
    model: str
    sent: float
    ended: float
    kind: str  # "HTTP 503", "gRPC UNAVAILABLE", "transport ConnectionResetError", "wrong answer"
    detail: str = ""


@dataclass
class Event:
    """A kill or a rollout. `done`: when its effect was over (the replacement replica running;
    the old version END), None if never seen."""

    kind: str  # "kill" | "rollout"
    model: str
    at: float
    detail: str
    done: float | None = None
    extra: dict = field(default_factory=dict)


def classify(failure: Failure, events: Sequence[Event], near_s: float) -> str:
    """The category of a failed request against the run's kills and rollouts (same model only):
    in flight at a kill (sent before it, ended after it), sent within `near_s` after a kill,
    during a rollout (ended after the new version appeared, sent before the old one was END plus
    `near_s`), or other. The first that applies wins, in that order."""
    same = [e for e in events if e.model == failure.model]
    kills = [e for e in same if e.kind == "kill"]
    if any(failure.sent <= e.at <= failure.ended for e in kills):
        return IN_FLIGHT_AT_KILL
    if any(e.at < failure.sent <= e.at + near_s for e in kills):
        return AFTER_KILL
    for e in same:
        if e.kind == "rollout":
            end = (e.done if e.done is not None else e.at) + near_s
            if failure.ended >= e.at and failure.sent <= end:
                return DURING_ROLLOUT
    return OTHER


def replica_app(title: str) -> str | None:
    """The Serve application of a replica from its process title: `ray::ServeReplica:APP:DEPL`
    (with `.method` while it runs one), or `ray::SERVE_REPLICA::APP#DEPL#ID:...` while the
    actor starts; None for any other title."""
    for prefix, end in (("ray::ServeReplica:", ":"), ("ray::SERVE_REPLICA::", "#")):
        if title.startswith(prefix):
            return title[len(prefix) :].split(end, 1)[0]
    return None


# role of a Python daemon or worker -> the end of its script's path
SCRIPTS = (
    ("starting workers", ("default_worker.py", "setup_worker.py")),
    ("dashboard agent", ("dashboard/agent.py",)),
    ("dashboard", ("dashboard/dashboard.py",)),
    ("log monitor", ("log_monitor.py",)),
    ("monitor", ("autoscaler/_private/monitor.py",)),
    ("runtime env agent", ("runtime_env/agent/main.py",)),
)


def role_of(argv: Sequence[str], pid: int, server_pid: int) -> str:
    """The role of one server process from its command line: Ray sets workers' titles to
    `ray::Class[.method]`, or to the replica's application and deployment for Serve's replicas;
    GCS and raylet are binaries; the dashboard, its agents and the monitors are Python scripts."""
    if pid == server_pid:
        return "aspire serve"
    title = argv[0] if argv else ""
    app = replica_app(title)
    if app is not None:
        if app.startswith("aspire-router"):  # aspire-router[-<node>]
            return "router"
        if app.startswith("aspire-servable-host-"):
            return "shared host"
        for model in MODELS:
            if app.startswith(app_name(model, 0)[:-1]):  # every version's application
                return f"replicas {model}"
        return "replicas (other)"
    for prefix, role in (
        ("ray::ManagerActor", "manager"),
        ("ray::ServeController", "serve controller"),
        ("ray::ProxyActor", "serve proxy"),
        ("ray::DashboardAgent", "dashboard agent"),
        ("ray::RuntimeEnvAgent", "runtime env agent"),
        ("ray::IDLE", "idle workers"),
    ):
        if title.startswith(prefix):
            return role
    if title.startswith("ray::"):
        return "other ray actors"
    binary = os.path.basename(title)
    if binary in ("gcs_server", "raylet"):
        return "gcs" if binary == "gcs_server" else "raylet"
    scripts = [a for a in argv[1:] if a.endswith(".py")]
    for role, ends in SCRIPTS:
        if any(a.endswith(e) for a in scripts for e in ends):
            return role
    return "other"


def role_table(samples: Sequence[dict], warmup_s: float) -> list[dict]:
    """Per role: processes (min, max), RSS and fds at the first and last sample, their maxima,
    and slopes per hour over the samples taken at or after `warmup_s`. A sample is
    {"t": seconds, "roles": {role: [rss_bytes, fds, processes]}}; a role missing from a sample
    counts as 0 there."""
    roles = sorted({r for s in samples for r in s["roles"]})
    rows = []
    for role in roles:
        series = [(s["t"], s["roles"].get(role, [0, 0, 0])) for s in samples]
        late = [(t, v) for t, v in series if t >= warmup_s]
        rows.append(
            {
                "role": role,
                "procs": (min(v[2] for _, v in series), max(v[2] for _, v in series)),
                "rss": (series[0][1][0], series[-1][1][0], max(v[0] for _, v in series)),
                "fds": (series[0][1][1], series[-1][1][1], max(v[1] for _, v in series)),
                "rss_slope": slope_per_hour([(t, v[0]) for t, v in late]),
                "rss_per_proc_slope": slope_per_hour([(t, v[0] / v[2]) for t, v in late if v[2]]),
                "fds_slope": slope_per_hour([(t, v[1]) for t, v in late]),
            }
        )
    return rows


# ----------------------------------------------------------------------------- requests


def grpc_requests() -> dict[str, dict[str, bytes]]:
    """Serialized PredictRequest and ModelInferRequest per model (protos without TF's runtime)."""
    from core import protos

    protos.load()
    from tensorflow_serving.apis import predict_pb2

    from deployments.wire.v2_protos import ModelInferRequest

    out: dict[str, dict[str, bytes]] = {"grpc": {}, "v2grpc": {}}
    raw = b"".join(int.to_bytes(_f32_bits(x), 4, "little") for x in X)
    for name in MODELS:
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = name
        tensor = predict.inputs["x"]
        tensor.dtype = 1  # DT_FLOAT
        tensor.tensor_shape.dim.add(size=len(X))
        tensor.float_val.extend(X)
        out["grpc"][name] = predict.SerializeToString()
        infer = ModelInferRequest(model_name=name)
        infer.inputs.add(name="x", datatype="FP32", shape=[len(X), 1])
        infer.raw_input_contents.append(raw)
        out["v2grpc"][name] = infer.SerializeToString()
    return out


def _f32_bits(x: float) -> int:
    import struct

    return int.from_bytes(struct.pack("<f", x), "little")


def _floats_le(raw: bytes) -> list[float]:
    import struct

    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class RestClient:
    """One keep-alive HTTP connection; `call(model)` returns None or (kind, detail)."""

    def __init__(self, port: int, v2: bool):
        self.port, self.v2 = port, v2
        self.conn: http.client.HTTPConnection | None = None
        tensor = {"name": "x", "shape": [len(X), 1], "datatype": "FP32", "data": list(X)}
        doc = {"inputs": [tensor]} if v2 else {"instances": list(X)}
        self.body = json.dumps(doc).encode()

    def call(self, model: str) -> tuple[str, str] | None:
        path = f"/v2/models/{model}/infer" if self.v2 else f"/v1/models/{model}:predict"
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, REQUEST_TIMEOUT_S)
            self.conn.request("POST", path, self.body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return f"transport {type(exc).__name__}", str(exc)[:200]
        if response.status != 200:
            return f"HTTP {response.status}", data[:200].decode(errors="replace")
        try:
            doc = json.loads(data)
            values = doc["outputs"][0]["data"] if self.v2 else doc["predictions"]
        except (ValueError, KeyError, IndexError):
            return "wrong answer", data[:200].decode(errors="replace")
        if [float(v) for v in values] != expected(model):
            return "wrong answer", data[:200].decode(errors="replace")
        return None


class GrpcClient:
    """Calls on a channel shared by the process's clients; raw bytes in and out."""

    def __init__(self, channel, protocol: str, requests: dict[str, bytes]):
        self.protocol, self.requests = protocol, requests
        self.stub = channel.unary_unary(PREDICT if protocol == "grpc" else MODEL_INFER)

    def call(self, model: str) -> tuple[str, str] | None:
        import grpc

        try:
            answer = self.stub(self.requests[model], timeout=REQUEST_TIMEOUT_S)
        except grpc.RpcError as err:
            return f"gRPC {err.code().name}", (err.details() or "")[:200]
        if self.values(answer) != expected(model):
            return "wrong answer", repr(answer[:200])
        return None

    def values(self, answer: bytes) -> list[float]:
        if self.protocol == "grpc":
            from tensorflow_serving.apis import predict_pb2

            response = predict_pb2.PredictResponse.FromString(answer)
            return list(response.outputs["y"].float_val)
        from deployments.wire.v2_protos import ModelInferResponse

        infer = ModelInferResponse.FromString(answer)
        return _floats_le(infer.raw_output_contents[0]) if infer.raw_output_contents else []


# ----------------------------------------------------------------------------- load processes


def load_process(
    protocol: str,
    port: int,
    grpc_port: int,
    requests: dict[str, bytes],
    clients: int,
    start_at: float,
    stop_at: float,
    out: mp.Queue,
) -> None:
    """One protocol's closed-loop clients, from `start_at` to `stop_at` (time.monotonic()).
    Puts ("ok", protocol, [(sent, seconds, model)]) and ("fail", protocol, [Failure]) about once a
    second, then ("done", protocol, CPU seconds of this process)."""
    channel = None
    if protocol in ("grpc", "v2grpc"):
        import grpc

        from core import protos

        protos.load()
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")

    def make_client():
        if channel is not None:
            return GrpcClient(channel, protocol, requests)
        return RestClient(port, v2=protocol == "v2")

    models = list(MODELS)
    ok: list[tuple[float, float, str]] = []
    failed: list[Failure] = []

    def run(index: int) -> None:
        client = make_client()
        for model in models:  # connect and warm up before the clock starts; not counted
            client.call(model)
        i = index
        while time.monotonic() < start_at:
            time.sleep(0.01)
        while True:
            sent = time.monotonic()
            if sent >= stop_at:
                return
            model = models[i % len(models)]
            i += 1
            result = client.call(model)
            ended = time.monotonic()
            if result is None:
                ok.append((sent, ended - sent, model))
            else:
                failed.append(Failure(protocol, model, sent, ended, *result))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        _flush(out, protocol, ok, failed)
    _flush(out, protocol, ok, failed)
    out.put(("done", protocol, time.process_time()))


def _flush(out: mp.Queue, protocol: str, ok: list, failed: list) -> None:
    """Hand over what the clients recorded so far: the first n records are copied, then deleted
    (each step atomic under the GIL; clients only append, so no record is lost)."""
    for what, records in (("ok", ok), ("fail", failed)):
        n = len(records)
        if n:
            batch = records[:n]
            del records[:n]
            out.put((what, protocol, batch))


# ----------------------------------------------------------------------------- server processes


def server_processes(root: int) -> dict[int, list[str]]:
    """pid -> argv of `root` and every live process below it or in its session (Ray's daemons
    and workers), read from /proc; zombies left out. The argv may read empty while Ray rewrites
    a process's title."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    zombies: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)], sessions[int(entry)] = int(fields[1]), int(fields[3])
            if fields[0] == "Z":
                zombies.add(int(entry))
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    session = sessions.get(root, -1)
    tree |= {pid for pid, sid in sessions.items() if sid == session and session > 0}
    out = {}
    for pid in tree - zombies:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
    return out


def rss_and_fds(pid: int) -> tuple[int, int] | None:
    """VmRSS in bytes and the count of open fds, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return (int(m.group(1)) * 1024 if m else 0), fds


# Roles a process can leave: a starting worker becomes an idle worker or an actor, Ray hands idle
# workers out as actors, and an unknown title may be one read while Ray rewrote it.
PASSING_ROLES = ("starting workers", "idle workers", "other ray actors", "other")


def sample_roles(
    server_pid: int, titles: dict[str, set[str]], known: dict[int, str]
) -> dict[str, list[int]]:
    """role -> [RSS bytes, fds, processes], summed over the server's processes now. A process
    keeps the role it was first seen in (`known`, pid -> role), unless that role is one it can
    leave, so a title read while Ray rewrites it does not move a process. Adds each process's
    title (argv[0], cut to 80 characters) to `titles[role]`."""
    roles: dict[str, list[int]] = {}
    for pid, argv in server_processes(server_pid).items():
        got = rss_and_fds(pid)
        if got is None:
            continue
        role = known.get(pid) or role_of(argv, pid, server_pid)
        if argv and role not in PASSING_ROLES:
            known[pid] = role
        if argv:
            titles.setdefault(role, set()).add(argv[0][:80])
        acc = roles.setdefault(role, [0, 0, 0])
        acc[0] += got[0]
        acc[1] += got[1]
        acc[2] += 1
    return roles


def load_average() -> float | None:
    """The machine's 1-minute load average (every process, not only the server's)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def replica_pids(model: str, version: int) -> list[int]:
    """Live replica processes of one version, by their Ray process title."""
    prefix = f"ray::ServeReplica:{app_name(model, version)}:".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(prefix):
                        found.append(int(entry))
            except OSError:
                continue
    return sorted(found)


# ----------------------------------------------------------------------------- the server


class Soak:
    """The server, its models and the run's events."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="aspire-soak-"))
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.events: list[Event] = []
        self.samples: list[dict] = []
        self.titles: dict[str, set[str]] = {}
        self.known_roles: dict[int, str] = {}
        self.versions = {name: 1 for name in MODELS}
        self.rolling: set[str] = set()
        self.lock = threading.Lock()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    # -- start and stop
    def prepare(self) -> Path:
        lines = []
        for name, (source, _) in MODELS.items():
            version_dir = next(p for p in (DATA / source).iterdir() if p.name.isdigit())
            shutil.copytree(version_dir, self.work / "models" / name / "1")
            lines.append(
                f'  config {{ name: "{name}" base_path: "{self.work / "models" / name}" '
                'model_platform: "tensorflow" }'
            )
        config = self.work / "models.config"
        config.write_text("model_config_list {\n" + "\n".join(lines) + "\n}\n")
        return config

    def start(self) -> None:
        config = self.prepare()
        cmd = [
            str(Path(sys.executable).parent / "aspire"),
            "serve",
            f"--model_config_file={config}",
            f"--rest_api_port={self.port}",
            f"--port={self.grpc_port}",
            "--rest_api_host=127.0.0.1",
            "--file_system_poll_wait_seconds=1",
            f"--num_replicas={self.args.replicas}",
            f"--num_cpus_per_replica={self.args.cpus_per_replica}",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            text=True,
        )
        deadline = time.monotonic() + 600
        while "Exporting HTTP/REST API" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aspire serve did not start:\n{self.output()[-4000:]}")
            time.sleep(0.5)
        for name in MODELS:
            self.wait_version(name, 1, "AVAILABLE", 300)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_server(self.proc, 120)
        shutil.rmtree(self.work, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- model states
    def states(self, name: str) -> dict[int, str]:
        """version -> state, from GET /v1/models/NAME ({} when it does not answer)."""
        import requests

        try:
            r = requests.get(f"{self.url}/v1/models/{name}", timeout=10)
            return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}
        except (requests.RequestException, ValueError, KeyError):
            return {}

    def wait_version(self, name: str, version: int, state: str, timeout_s: float) -> float | None:
        """time.monotonic() when `version` of `name` reached `state`, None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.states(name).get(version) == state:
                return time.monotonic()
            time.sleep(0.25)
        return None

    # -- events
    def kill(self, index: int) -> None:
        """SIGKILL one replica of the newest version of a model not in a rollout; a thread waits
        for its replacement."""
        names = list(MODELS)
        with self.lock:
            candidates = [names[(index + k) % len(names)] for k in range(len(names))]
            free = [n for n in candidates if n not in self.rolling]
            if not free:
                return
            model = free[0]
            version = self.versions[model]
        pids = replica_pids(model, version)
        for _ in range(20):  # a title read while Ray rewrites it is missed: read again
            if len(pids) >= self.args.replicas:
                break
            time.sleep(0.1)
            pids = sorted(set(pids) | set(replica_pids(model, version)))
        if not pids:
            print(f"kill: no replica of {model} v{version} found", flush=True)
            return
        victim = pids[index % len(pids)]
        os.kill(victim, signal.SIGKILL)
        event = Event("kill", model, time.monotonic(), f"pid {victim} of v{version}")
        self.record(event)
        others = set(pids) - {victim}

        def replaced() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                now = set(replica_pids(model, version))
                if victim not in now and others <= now and len(now) >= len(pids):
                    event.done = time.monotonic()
                    return
                time.sleep(0.25)

        threading.Thread(target=replaced, daemon=True).start()

    def rollout(self, index: int) -> None:
        """Add a version to a model: a copy of the serving version N, renamed into place as the
        highest number yet (N + 1 unless an earlier rollout never became AVAILABLE); a thread
        waits for it to be AVAILABLE and for N to be END."""
        model = list(MODELS)[(index + 1) % len(MODELS)]  # not the first kill's model
        with self.lock:
            if model in self.rolling:
                return
            self.rolling.add(model)
            old = self.versions[model]
        base = self.work / "models" / model
        new = max(int(p.name) for p in base.iterdir() if p.name.isdigit()) + 1
        staging = self.work / f".staging-{model}-{new}"
        shutil.copytree(base / str(old), staging)
        staging.rename(base / str(new))
        event = Event("rollout", model, time.monotonic(), f"v{old} -> v{new}")
        self.record(event)

        def settle() -> None:
            available = self.wait_version(model, new, "AVAILABLE", 600)
            ended = self.wait_version(model, old, "END", 600) if available else None
            event.extra = {
                "available_s": None if available is None else available - event.at,
                "old_end_s": None if ended is None else ended - event.at,
            }
            event.done = ended
            with self.lock:
                if available is not None:
                    self.versions[model] = new
                self.rolling.discard(model)

        threading.Thread(target=settle, daemon=True).start()

    def record(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
        print(f"{event.at - self.t0:7.1f} s  {event.kind} {event.model} {event.detail}", flush=True)

    def schedule(self, stop_at: float, halt: threading.Event) -> None:
        """Kills and rollouts every N seconds (the first at N / 2) until `stop_at`."""
        plan = []
        for kind, every in (
            ("kill", self.args.kill_every_s),
            ("rollout", self.args.rollout_every_s),
        ):
            if every > 0:
                k = 0
                while self.t0 + every * (k + 0.5) < stop_at:
                    plan.append((self.t0 + every * (k + 0.5), kind, k))
                    k += 1
        for at, kind, k in sorted(plan):
            if halt.wait(max(0.0, at - time.monotonic())):
                return
            if self.alive():
                (self.kill if kind == "kill" else self.rollout)(k)

    def sample(self, stop_at: float, halt: threading.Event) -> None:
        """Process samples every `--sample-every-s` from t0 until `stop_at`, and one at the end."""
        assert self.proc is not None
        while True:
            self.samples.append(
                {
                    "t": time.monotonic() - self.t0,
                    "roles": sample_roles(self.proc.pid, self.titles, self.known_roles),
                    "load1": load_average(),
                }
            )
            if time.monotonic() >= stop_at or halt.wait(
                min(self.args.sample_every_s, max(0.0, stop_at - time.monotonic()))
            ):
                return


# ----------------------------------------------------------------------------- results


@dataclass
class Window:
    """One window's requests of one protocol: latencies of correct answers, failures."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0


def collect(
    results: mp.Queue, workers: list, soak: Soak, windows: dict, failures: list, cpu: dict
) -> None:
    """Read the load processes' batches into windows until every process is done."""
    done: set[str] = set()
    while len(done) < len(workers):
        try:
            what, protocol, payload = results.get(timeout=2.0)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                break
            continue
        if what == "ok":
            for sent, seconds, _model in payload:
                windows[(window_of(sent, soak), protocol)].latencies.append(seconds)
        elif what == "fail":
            for f in payload:
                windows[(window_of(f.sent, soak), protocol)].failed += 1
                failures.append(f)
        else:
            done.add(protocol)
            cpu[protocol] = payload


def window_of(t: float, soak: Soak) -> int:
    return max(0, int((t - soak.t0) // soak.args.window_s))


def commit_line() -> str:
    """`working tree on top of REV` when tracked files differ from HEAD, else `commit REV`."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "commit unknown"
    return f"working tree on top of {rev}" if dirty else f"commit {rev}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _spread(values: list[float]) -> str:
    """min / median / max of per-window figures, in ms."""
    if not values:
        return "-"
    return " / ".join(_ms(v) for v in (min(values), statistics.median(values), max(values)))


def _slope(value: float | None, scale: float, unit: str) -> str:
    return "-" if value is None else f"{value / scale:+.1f} {unit}/h"


def report(r: dict) -> str:
    """The markdown report of one run (`r` as `run()` builds it)."""
    a = r["args"]
    protocols, n_windows = a["protocols"], r["n_windows"]
    lines = [
        f"Run {r['started']} UTC on {r['machine']}, {r['commit']}.",
        f"Command: `{r['command']}`.",
        "",
        f"{a['minutes']:g} minutes; models hpt_a and hpt_b (half_plus_two) and hp3 "
        f"(half_plus_three), {a['replicas']} replicas per version (each reserving "
        f"{a['cpus_per_replica']:g} of Ray's CPUs); {a['clients']} closed-loop "
        f"clients per protocol ({', '.join(protocols)}), each cycling through the models and "
        f"checking the values; a replica SIGKILLed every {a['kill_every_s']:g} s and a version "
        f"added every {a['rollout_every_s']:g} s (the first of each at half the period); "
        f"windows of {a['window_s']:g} s. Load generators and server share the machine.",
        "",
        "| protocol | requests | req/s | failed | client CPU | p50 ms per window (min / median / "
        "max) | p99 ms per window (min / median / max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in protocols:
        ws = [r["windows"][str(w)][p] for w in range(n_windows)]
        total = sum(w["ok"] for w in ws)
        lines.append(
            f"| {p} | {total} | {total / r['duration_s']:.0f} | {sum(w['failed'] for w in ws)} | "
            f"{100 * r['client_cpu'].get(p, 0) / r['duration_s']:.0f}% | "
            f"{_spread([w['p50'] for w in ws if w['p50'] is not None])} | "
            f"{_spread([w['p99'] for w in ws if w['p99'] is not None])} |"
        )
    loads = [s["load1"] for s in r["samples"] if s.get("load1") is not None]
    if loads:
        lines += [
            "",
            f"The machine's 1-minute load average during the run (all processes, other users' "
            f"included): min {min(loads):.1f}, median {statistics.median(loads):.1f}, max "
            f"{max(loads):.1f}.",
        ]
    lines += ["", *failure_lines(r), "", *event_lines(r), "", *window_lines(r), ""]
    lines += process_lines(r)
    return "\n".join(lines)


def failure_lines(r: dict) -> list[str]:
    counts = r["failure_counts"]
    total = sum(counts.values())
    bound = r["kills"] * r["clients_total"]
    lines = [
        f"**Failed: {total}** ({IN_FLIGHT_AT_KILL}: {counts[IN_FLIGHT_AT_KILL]}, "
        f"{AFTER_KILL} (<= {r['args']['near_s']:g} s): {counts[AFTER_KILL]}, "
        f"{DURING_ROLLOUT}: {counts[DURING_ROLLOUT]}, {OTHER}: {counts[OTHER]}); at most "
        f"{bound} could be in flight at the {r['kills']} kills ({r['clients_total']} clients).",
    ]
    if r["failure_kinds"]:
        lines += ["", "| category | protocol | model | kind | count | first detail |"]
        lines.append("|---|---|---|---|---|---|")
        for row in r["failure_kinds"]:
            detail = row["detail"].replace("|", "/").replace("\n", " ")[:100]
            lines.append(
                f"| {row['category']} | {row['protocol']} | {row['model']} | {row['kind']} | "
                f"{row['count']} | {detail} |"
            )
    return lines


def event_lines(r: dict) -> list[str]:
    lines = ["| t (s) | event | model | detail | done after (s) |", "|---|---|---|---|---|"]
    for e in r["events"]:
        if e["kind"] == "kill":
            done = "-" if e["done_s"] is None else f"replacement running: {e['done_s']:.1f}"
        else:
            x = e["extra"]
            done = (
                f"new AVAILABLE: {_num(x.get('available_s'))}, old END: {_num(x.get('old_end_s'))}"
            )
        lines.append(f"| {e['at_s']:.0f} | {e['kind']} | {e['model']} | {e['detail']} | {done} |")
    return lines


def _num(v: float | None) -> str:
    return "never" if v is None else f"{v:.1f}"


def window_lines(r: dict) -> list[str]:
    protocols = r["args"]["protocols"]
    head = "| window | " + " | ".join(f"{p} req/s, p50 / p99 ms" for p in protocols)
    lines = [head + " | failed | events |", "|---" * (len(protocols) + 3) + "|"]
    for w in range(r["n_windows"]):
        cells = []
        for p in protocols:
            c = r["windows"][str(w)][p]
            cells.append(f"{c['rps']:.0f}, {_ms(c['p50'])} / {_ms(c['p99'])}")
        failed = sum(r["windows"][str(w)][p]["failed"] for p in protocols)
        events = ", ".join(
            f"{e['kind']} {e['model']}"
            for e in r["events"]
            if w * r["args"]["window_s"] <= e["at_s"] < (w + 1) * r["args"]["window_s"]
        )
        start = w * r["args"]["window_s"]
        lines.append(f"| {start:.0f}-{start + r['args']['window_s']:.0f} s | " + " | ".join(cells))
        lines[-1] += f" | {failed} | {events} |"
    return lines


def process_lines(r: dict) -> list[str]:
    lines = [
        f"Processes of the server, sampled every {r['args']['sample_every_s']:g} s "
        f"({len(r['samples'])} samples); slopes: least squares over the samples from "
        f"{r['warmup_s']:g} s on (the first window is left out as warm-up). A role's RSS and "
        "fds are summed over its processes; the slope per process is that of the sum divided by "
        "the count. Killed replicas are replaced by new processes and a rollout replaces a "
        "model's replicas (both versions run meanwhile), so a replica role's figures restart "
        "there and its sum jumps while two versions run.",
        "",
        "| role | processes | RSS MiB start / end / max | RSS slope | RSS slope per process | "
        "fds start / end / max | fds slope |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["roles"]:
        lo, hi = row["procs"]
        rss, fds = row["rss"], row["fds"]
        lines.append(
            f"| {row['role']} | {lo if lo == hi else f'{lo}-{hi}'} | "
            f"{rss[0] / MIB:.0f} / {rss[1] / MIB:.0f} / {rss[2] / MIB:.0f} | "
            f"{_slope(row['rss_slope'], MIB, 'MiB')} | "
            f"{_slope(row['rss_per_proc_slope'], MIB, 'MiB')} | {fds[0]} / {fds[1]} / {fds[2]} | "
            f"{_slope(row['fds_slope'], 1, 'fds')} |"
        )
    return lines


def window_figures(windows: dict, protocols: Sequence[str], n: int, window_s: float, last_s: float):
    """Per window and protocol: correct answers, req/s, failed, p50 and p99 in seconds."""
    out: dict[str, dict] = {}
    for w in range(n):
        length = min(window_s, last_s - w * window_s) or window_s
        out[str(w)] = {}
        for p in protocols:
            cell = windows[(w, p)]
            out[str(w)][p] = {
                "ok": len(cell.latencies),
                "rps": len(cell.latencies) / length,
                "failed": cell.failed,
                "p50": percentile(cell.latencies, 0.5),
                "p99": percentile(cell.latencies, 0.99),
            }
    return out


def failure_kinds(failures: Sequence[Failure], categories: Sequence[str]) -> list[dict]:
    """Failures grouped by (category, protocol, model, kind), with the first one's detail."""
    groups: dict[tuple, dict] = {}
    for f, c in zip(failures, categories, strict=True):
        key = (c, f.protocol, f.model, f.kind)
        groups.setdefault(key, {"count": 0, "detail": f.detail})["count"] += 1
    return [
        {"category": c, "protocol": p, "model": m, "kind": k, **v}
        for (c, p, m, k), v in sorted(groups.items(), key=lambda kv: -kv[1]["count"])
    ]


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the load")
    parser.add_argument("--window-s", type=float, default=60.0, help="length of a report window")
    parser.add_argument("--kill-every-s", type=float, default=180.0, help="0: no kills")
    parser.add_argument("--rollout-every-s", type=float, default=240.0, help="0: no rollouts")
    parser.add_argument("--clients", type=int, default=2, help="closed-loop clients per protocol")
    parser.add_argument("--replicas", type=int, default=2, help="replicas per version")
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=0.1,
        help="aspire serve's --num_cpus_per_replica: Ray's default 0.25 leaves no CPU on a "
        "2-CPU machine for a rollout's new replicas beside 3 x 2 running ones",
    )
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument(
        "--near-s", type=float, default=5.0, help="a failure this soon after an event is its"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    args.protocols = [p for p in args.protocols.split(",") if p]
    unknown = set(args.protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"unknown protocols {sorted(unknown)} (known: {', '.join(PROTOCOLS)})")
    return args


def run(args: argparse.Namespace, soak: Soak) -> dict:
    """Start the load, the events and the sampler; collect until the end; the figures."""
    from collections import defaultdict

    requests_by = grpc_requests()
    results: mp.Queue = mp.get_context("spawn").Queue()
    lead_s = 15.0  # the load processes start (imports, connections, warm-up calls) meanwhile
    soak.t0 = time.monotonic() + lead_s
    stop_at = soak.t0 + args.minutes * 60
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(
            target=load_process,
            args=(
                p,
                soak.port,
                soak.grpc_port,
                requests_by.get(p, {}),
                args.clients,
                soak.t0,
                stop_at,
                results,
            ),
            daemon=True,
        )
        for p in args.protocols
    ]
    for w in workers:
        w.start()
    halt = threading.Event()
    time.sleep(max(0.0, soak.t0 - time.monotonic()))
    threads = [
        threading.Thread(target=soak.schedule, args=(stop_at, halt), daemon=True),
        threading.Thread(target=soak.sample, args=(stop_at, halt), daemon=True),
    ]
    for t in threads:
        t.start()
    windows: dict = defaultdict(Window)
    failures: list[Failure] = []
    cpu: dict[str, float] = {}
    collect(results, workers, soak, windows, failures, cpu)
    server_alive = soak.alive()
    halt.set()
    for t in threads:
        t.join(30)
    for w in workers:
        w.join(30)
    time.sleep(2)  # let event threads see a last state
    return figures(args, soak, windows, failures, cpu, stop_at, server_alive)


def figures(args, soak: Soak, windows, failures, cpu, stop_at: float, server_alive: bool) -> dict:
    duration = stop_at - soak.t0
    n_windows = max(1, int(-(-duration // args.window_s)))
    categories = [classify(f, soak.events, args.near_s) for f in failures]
    kills = sum(1 for e in soak.events if e.kind == "kill")
    return {
        "args": vars(args),
        "duration_s": duration,
        "n_windows": n_windows,
        "windows": window_figures(windows, args.protocols, n_windows, args.window_s, duration),
        "failures": [
            {**asdict(f), "sent": f.sent - soak.t0, "ended": f.ended - soak.t0, "category": c}
            for f, c in zip(failures, categories, strict=True)
        ],
        "failure_counts": {c: categories.count(c) for c in CATEGORIES},
        "failure_kinds": failure_kinds(failures, categories),
        "kills": kills,
        "clients_total": args.clients * len(args.protocols),
        "events": [
            {
                "kind": e.kind,
                "model": e.model,
                "at_s": e.at - soak.t0,
                "detail": e.detail,
                "done_s": None if e.done is None else e.done - e.at,
                "extra": e.extra,
            }
            for e in soak.events
        ],
        "client_cpu": cpu,
        "samples": soak.samples,
        "warmup_s": args.window_s,
        "roles": role_table(soak.samples, args.window_s),
        "role_titles": {role: sorted(t) for role, t in soak.titles.items()},
        "server_alive": server_alive,
    }


def verdict(r: dict) -> tuple[bool, str]:
    """(passed, the line that says why)."""
    counts = r["failure_counts"]
    bound = r["kills"] * r["clients_total"]
    unexpected = counts[AFTER_KILL] + counts[DURING_ROLLOUT] + counts[OTHER]
    if not r["server_alive"]:
        return False, "aspire serve stopped during the run"
    if unexpected:
        return False, f"{unexpected} requests failed other than in flight at a kill"
    if counts[IN_FLIGHT_AT_KILL] > bound:
        return False, f"{counts[IN_FLIGHT_AT_KILL]} failed at kills, more than {bound} in flight"
    return True, "every failed request was in flight at a kill"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.suite import machine

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    command = "bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    soak = Soak(args)
    try:
        soak.start()
        print(f"serving on {soak.url} and 127.0.0.1:{soak.grpc_port}", flush=True)
        r = run(args, soak)
    finally:
        soak.stop()
    r.update(started=started, machine=machine(), commit=commit_line(), command=command.strip())
    passed, why = verdict(r)
    text = f"{report(r)}\n\n**Verdict**: {'passed' if passed else 'FAILED'}: {why}.\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # results/ is not tracked: absent in a clone
    stem = out / f"soak-{started.replace(' ', '-').replace(':', '')}"
    stem.with_suffix(".md").write_text(f"# Soak run {started} UTC\n\n{text}")
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str))
    stem.with_suffix(".log").write_text(soak.output())
    print(f"\n{text}\nwritten to {stem}.md, .json and .log")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
