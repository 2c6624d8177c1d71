"""One real Ray cluster of several nodes on this machine, started once for the module: a head with
no GPUs and workers with one logical GPU each, every node on its own loopback address, and
`aspire serve --address` joining it with --proxy_location=EveryNode and --bind_node_ip, so each
node's routers answer on the node's own address. The tests run in order on
the same cluster: the replicas of a version spread over two workers; a node that joins gets its
routers; a worker SIGKILLed under load costs its version nothing but the requests in flight on
it, and its replica is re-placed on another node; the head (Redis behind its GCS) SIGKILLed
under load through a worker's router fails no request, and a head started again on the same
Redis adopts what kept serving. Each test prints the figures docs/operations.md quotes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from tests.integration.conftest import ASPIRE, DATA, ClosedLoop, Served, free_port, wait_for
from tests.support.ray_nodes import RayNode, listening_pids
from tests.support.redis import RedisServer

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
# The head's GCS health-checks the nodes every second and declares a node dead after 3 failed
# checks, so a killed worker is known in seconds.
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
# A worker's raylet waits this long for a GCS that went away before it gives up (Ray's default
# is 60 s); docs/operations.md gives the same advice for clusters with GCS fault tolerance.
WORKER_ENV = {"RAY_gcs_rpc_server_reconnect_timeout_s": "300"}


class Cluster:
    def __init__(self, base, gcs_port: int, port: int):
        self.base, self.gcs_port, self.port = base, gcs_port, port
        self.url = f"http://127.0.0.1:{port}"
        self.head: RayNode | None = None
        self.workers: dict[str, RayNode] = {}  # loopback address -> node
        self.server: Served | None = None
        self.flags: tuple[str, ...] = ()  # what `aspire serve` runs with
        self.redis: RedisServer | None = None
        # short: Ray's Unix socket paths live under it. Kept afterwards, as /tmp/ray is.
        self.head_temp = tempfile.mkdtemp(prefix="aspire-head-", dir="/tmp")

    def start_head(self) -> RayNode:
        """The head, with Redis behind its GCS (GCS fault tolerance). Its temporary directory is
        its own: `ray start --head` refuses the address its directory says it last started at
        while a process on this machine names that GCS (the workers' raylets do, here), a check
        made for one machine that a head restarted on the same machine as its workers must
        pass, so a restart forgets that address first."""
        assert self.redis is not None
        last = os.path.join(self.head_temp, "ray_current_cluster")
        if os.path.exists(last):
            os.unlink(last)
        self.head = RayNode(
            "--head",
            f"--port={self.gcs_port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.head_temp}",
            env={**HEAD_ENV, "RAY_REDIS_ADDRESS": self.redis.address},
        )
        return self.head

    def start_worker(self, ip: str) -> RayNode:
        node = RayNode(
            f"--address=127.0.0.1:{self.gcs_port}",
            "--num-cpus=2",
            "--num-gpus=1",
            f"--node-ip-address={ip}",
            env=WORKER_ENV,
        )
        self.workers[ip] = node
        return node

    def status(self) -> dict:
        return requests.get(f"{self.url}/v1/aspire/status", timeout=30).json()

    def nodes_of(self, name: str, version: int = 1) -> list[str]:
        placements = self.status()["placements"].get(name, {}).get(str(version), [])
        return sorted(p["node_id"] for p in placements)

    def node_id(self, ip: str) -> str:
        """The Ray node id of the node at `ip` (status lists each node's routers)."""
        return next((r["node"] for r in self.status()["routers"] if r["address"] == ip), "")

    def dump(self) -> None:
        """What `aspire serve` said (the manager's lines included), and where Ray's logs of
        every node are (the head's temporary directory: the workers take the head's), for a
        failure's report."""
        if self.server is not None:
            print("".join(self.server.out.lines[-150:]))
        print(f"Ray's logs: {self.head_temp}/session_latest/logs")

    def stop(self) -> None:
        for node in self.workers.values():
            node.stop()
        if self.head is not None:
            self.head.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    for name in ("spread", "on_cpu"):
        shutil.copytree(HALF_PLUS_TWO, base / "models" / name / "1")
    config = base / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'config {{ name: "{n}" base_path: "{base / "models" / n}" '
            'model_platform: "tensorflow" }\n'
            for n in ("spread", "on_cpu")
        )
        + "}\n"
    )
    settings = base / "aspire.json"
    settings.write_text(
        json.dumps(
            {
                "models": {
                    "spread": {"device": "gpu", "vram": "4GiB", "num_replicas": 2},
                    "on_cpu": {"device": "cpu"},
                }
            }
        )
    )
    c = Cluster(base, free_port(), free_port())
    try:
        c.redis = RedisServer(str(base / "redis"))
        c.start_head()
        c.start_worker("127.0.0.2")
        c.start_worker("127.0.0.3")
        c.flags = (
            f"--address=127.0.0.1:{c.gcs_port}",
            f"--model_config_file={config}",
            f"--aspire_config_file={settings}",
            "--gpus=1x16GiB",
            "--proxy_location=EveryNode",
            f"--rest_api_port={c.port}",
            "--port=0",
            "--bind_node_ip",  # each node's routers on its own address: 127.0.0.N
        )
        c.server = Served(*c.flags)
        with c.server:
            # The head's address is the machine's own (Ray takes it for a head whatever
            # --node-ip-address says); a worker's router tells it.
            c.url = f"http://127.0.0.2:{c.port}"
            routers = wait_for(lambda: c.status()["routers"], 60, what="routers in status")
            [head_ip] = [r["address"] for r in routers if r["address"] not in c.workers]
            c.url = f"http://{head_ip}:{c.port}"
            wait_for(
                lambda: all(r["running_replicas"] == 1 for r in c.status()["routers"]),
                120,
                what="a router running on every node",
            )
            yield c
    finally:
        c.stop()


def test_a_version_s_replicas_run_on_the_two_gpu_workers_and_every_node_runs_routers(cluster):
    workers = {cluster.node_id(ip) for ip in ("127.0.0.2", "127.0.0.3")}
    assert cluster.nodes_of("spread") == sorted(workers)  # one replica on each worker
    routers = cluster.status()["routers"]
    hosts = {h["node"] for h in cluster.status()["resources"]["hosts"]}  # every node: RAM
    assert len(hosts) == 3 and {r["node"] for r in routers} == hosts
    print("routers:", [(r["node"][:12], r["address"]) for r in routers])
    assert all(r["running_replicas"] == 1 for r in routers)
    placements = cluster.status()["placements"]
    assert {p["cuda_visible_devices"] for p in placements["spread"]["1"]} == {"0"}
    [on_cpu] = placements["on_cpu"]["1"]
    assert on_cpu["cuda_visible_devices"] == ""  # CPU replicas see no GPU
    for name in ("spread", "on_cpu"):
        r = requests.post(
            f"{cluster.url}/v1/models/{name}:predict", json={"instances": [1.0]}, timeout=30
        )
        assert r.json() == {"predictions": [2.5]}


def test_a_node_that_joins_gets_routers_listening_on_the_rest_port(cluster):
    started = time.monotonic()
    node = cluster.start_worker("127.0.0.4")
    joined = time.monotonic()  # `ray start` returns once the node is registered
    url = f"http://127.0.0.4:{cluster.port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/v1/models/spread", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, 120, 0.25, what="the new node's REST port to answer")
    except AssertionError:
        cluster.dump()
        raise
    took = time.monotonic() - joined
    listening = node.pids() & listening_pids(cluster.port)
    assert listening  # its own router answered, not another node's
    new_id = wait_for(lambda: cluster.node_id("127.0.0.4"), 30, what="the node in status")
    assert new_id in {r["node"] for r in cluster.status()["routers"]}
    r = requests.post(f"{url}/v1/models/spread:predict", json={"instances": [1.0]}, timeout=30)
    assert r.json() == {"predictions": [2.5]}
    print(
        f"node {new_id[:12]} joined ({joined - started:.1f} s of `ray start`); its router (pid "
        f"{sorted(listening)}) answered on the REST port {took:.1f} s after it joined"
    )


class Load(ClosedLoop):
    """`clients` threads predicting back to back, each on its own keep-alive connection (a new
    one after a transport failure). Each request's (client, connection opened, sent, ended,
    outcome); started and stopped as ClosedLoop is."""

    def __init__(self, url: str, clients: int = 8):
        self.url, self.stop = url, threading.Event()
        self.done: list[tuple[int, float, float, float, str]] = []
        self.in_flight: dict[int, float] = {}  # client -> when its request was sent
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def _run(self, client: int):
        session, opened = requests.Session(), time.monotonic()
        while not self.stop.is_set():
            sent = self.in_flight[client] = time.monotonic()
            try:
                r = session.post(self.url, json={"instances": [1.0]}, timeout=60)
                outcome = "ok" if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                outcome = f"transport {type(exc).__name__}"
                session, opened = requests.Session(), time.monotonic()
            del self.in_flight[client]
            self.done.append((client, opened, sent, time.monotonic(), outcome))


def test_a_worker_killed_under_load_costs_only_requests_in_flight_and_its_replica_is_re_placed(
    cluster,
):
    victim_ip = "127.0.0.2"
    victim = cluster.node_id(victim_ip)
    survivor = cluster.node_id("127.0.0.3")
    spare = cluster.node_id("127.0.0.4")  # joined in the test before, with a free GPU
    assert cluster.nodes_of("spread") == sorted([victim, survivor])
    states: list[str] = []
    watching = threading.Event()

    def watch():  # the version's state, as clients see it, all along
        while not watching.is_set():
            try:
                r = requests.get(f"{cluster.url}/v1/models/spread/versions/1", timeout=10)
                states.append(r.json()["model_version_status"][0]["state"])
            except (requests.RequestException, KeyError, ValueError) as exc:
                states.append(f"no answer: {type(exc).__name__}")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    with Load(f"{cluster.url}/v1/models/spread:predict") as load:
        wait_for(lambda: len(load.done) >= 50, 60, what="load running")
        watcher.start()
        in_flight_at_kill = len(load.in_flight)
        killed = time.monotonic()
        cluster.workers[victim_ip].stop()
        replaced = wait_for(
            lambda: cluster.nodes_of("spread") == sorted([survivor, spare]) or None,
            180,
            0.5,
            what="the lost replica re-placed on the spare node",
        )
        took = time.monotonic() - killed
        assert replaced
        after = len(load.done)
        wait_for(lambda: len(load.done) >= after + 50, 60, what="load going on after the repair")
    watching.set()
    watcher.join(15)
    failed = [(c, opened, sent, o) for c, opened, sent, _, o in load.done if o != "ok"]
    print(
        f"worker {victim[:12]} SIGKILLed under 8 clients: {len(load.done)} requests, "
        f"{len(failed)} failed ({in_flight_at_kill} in flight at the kill); the lost replica "
        f"ran again on {spare[:12]} {took:.1f} s after the kill; version states seen: "
        f"{sorted(set(states))}"
    )
    assert set(states) == {"AVAILABLE"}, states
    # Through the head's router: what may fail is what was in flight on the worker's replica
    # at the kill (the router sends such a call once more, to the survivor).
    assert all(sent < killed for _, _, sent, _ in failed), failed
    assert len(failed) <= in_flight_at_kill, failed
    assert cluster.status()["missing_replicas"] == {}
    on_cpu = requests.post(
        f"{cluster.url}/v1/models/on_cpu:predict", json={"instances": [1.0]}, timeout=30
    )
    assert on_cpu.json() == {"predictions": [2.5]}


def test_the_head_s_loss_fails_no_request_through_a_worker_and_a_new_head_adopts_what_served(
    cluster,
):
    """Last: it kills the head. SIGKILL every head process (and `aspire serve`, which runs there)
    under load through a worker's router; keep it away 30 s; start a head again on the same
    Redis."""
    worker_url = f"http://127.0.0.3:{cluster.port}"
    pids_before = {p["pid"] for p in cluster.status()["placements"]["spread"]["1"]}
    assert cluster.nodes_of("spread")  # on the workers only: the head has no GPU
    with Load(f"{worker_url}/v1/models/spread:predict") as load:
        wait_for(lambda: len(load.done) >= 50, 60, what="load running")
        assert cluster.server is not None
        cluster.server.proc.kill()
        assert cluster.head is not None
        cluster.head.stop()
        killed = time.monotonic()
        cluster.url = worker_url  # the head's router is gone with it
        # Status while the head is away: a clear UNAVAILABLE from the worker's router, no hang.
        asked = time.monotonic()
        r = requests.get(f"{worker_url}/v1/aspire/status", timeout=120)
        status_took = time.monotonic() - asked
        assert r.status_code == 503 and "manager did not answer" in r.json()["error"], r.text
        # A version that appears while the head is away.
        shutil.copytree(HALF_PLUS_TWO, cluster.base / "models" / "on_cpu" / "2")
        done_at_kill = len(load.done)
        wait_for(lambda: time.monotonic() - killed >= 30, 60, 1, what="30 s without a head")
        served_while_away = len(load.done) - done_at_kill
        cluster.start_head()
        restarted = time.monotonic()

        def status_answers() -> bool:
            try:
                out = subprocess.run(
                    [ASPIRE, "status", f"--address=127.0.0.1:{cluster.gcs_port}"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={**os.environ, "RAY_AUTH_MODE": "token"},
                )
            except subprocess.TimeoutExpired:
                return False
            return out.returncode == 0 and "spread" in out.stdout

        wait_for(status_answers, 180, 1, what="aspire status to answer after the restart")
        status_after = time.monotonic() - restarted

        def v2_served() -> bool:
            r = requests.post(
                f"{worker_url}/v1/models/on_cpu/versions/2:predict",
                json={"instances": [1.0]},
                timeout=30,
            )
            return r.status_code == 200

        try:
            wait_for(v2_served, 240, 1, what="the version added while the head was away")
        except (AssertionError, requests.RequestException):
            cluster.dump()
            raise
        v2_after = time.monotonic() - restarted
    failed = [(sent, o) for _, _, sent, _, o in load.done if o != "ok"]
    pids_after = {p["pid"] for p in cluster.status()["placements"]["spread"]["1"]}
    # `aspire serve` started again with the same flags (ray up's head commands, a driver pod
    # that Kubernetes restarts) adopts the manager that carried on: nothing is reloaded, and a
    # model added to the config file while no driver ran is served.
    shutil.copytree(HALF_PLUS_TWO, cluster.base / "models" / "late" / "1")
    config = cluster.base / "models.config"
    late = (
        f'config {{ name: "late" base_path: "{cluster.base / "models" / "late"}" '
        'model_platform: "tensorflow" }\n}\n'
    )
    config.write_text(config.read_text().rstrip().removesuffix("}") + late)
    asked = time.monotonic()
    with Served(*cluster.flags) as again:
        adopted_in = time.monotonic() - asked
        assert again.out.find(r"Aspire already runs on this cluster with the same flags"), "".join(
            again.out.lines
        )
        assert {p["pid"] for p in cluster.status()["placements"]["spread"]["1"]} == pids_before
        r = requests.post(f"{worker_url}/v1/models/late:predict", json={"instances": [1.0]})
        assert r.json() == {"predictions": [2.5]}
        r = requests.post(
            f"{worker_url}/v1/models/on_cpu/versions/2:predict",
            json={"instances": [1.0]},
            timeout=30,
        )
        assert r.json() == {"predictions": [2.5]}
    print(
        f"head SIGKILLed under 8 clients on a worker's router: {served_while_away} answered "
        f"in the {30:.0f} s without a head, {len(load.done)} in all, {len(failed)} failed; "
        f"status while away: 503 in {status_took:.1f} s; after the head's restart `aspire "
        f"status` answered in {status_after:.1f} s, the version added meanwhile served in "
        f"{v2_after:.1f} s; spread v1 kept its replicas {sorted(pids_before)}; `aspire serve` "
        f"run again with the same flags adopted the manager, ready in {adopted_in:.1f} s"
    )
    assert failed == []
    assert served_while_away > 0
    assert pids_after == pids_before  # adopted, not reloaded
