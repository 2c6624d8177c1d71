"""Capacity that grows with demand, on Ray's real autoscaler: a head started with an autoscaling
config whose provider is Ray's fake multi-node provider (`fake_multinode`: it starts each node
it launches as a real raylet on this machine) and one worker type of 1 CPU, none running at
start. `aspire serve --capacity_wait_s` joins it with --num_cpus_per_replica=1, so the head (2
CPUs, 0.25 of them its router's) holds one replica and a second version fits only on a worker.

The tests run in order on the same cluster, started once for the module: a version that fits
only on a worker waits as LOADING, asks the autoscaler, and is served from the node it adds; a
version that fits no node type (1 TiB of host RAM) ends with RESOURCE_EXHAUSTED once its wait
runs out, and no node is launched for it; a node left idle after its version unloads goes back
through the autoscaler's idle timeout. Each test prints the figures docs/operations.md quotes.
`ray.cluster_utils.AutoscalingCluster` is not used as is: its start runs `ray stop --force`,
which would end every Ray on this machine."""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import pytest
import requests

from tests.integration.conftest import DATA, Served, free_port, wait_for
from tests.support.ray_nodes import RayNode

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
HEAD_IP = "127.0.0.5"
WAIT_S = 60  # --capacity_wait_s: room for a node start on a loaded 2-core machine
IDLE_TIMEOUT_MINUTES = 0.25  # the autoscaler removes a node idle this long


def autoscaling_config(gcs_address: str) -> dict:
    """Ray's fake multi-node provider config (what `fake_multi_node/example.yaml` in Ray's
    sources holds, which the wheel does not ship), with this cluster's head and worker type."""
    return {
        "cluster_name": "aspire-capacity",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # without it, the fake nodes look for port 6379
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class Grown:
    def __init__(self, base, gcs_port: int, port: int):
        self.base, self.port = base, port
        self.gcs = f"{HEAD_IP}:{gcs_port}"
        self.url = f"http://127.0.0.1:{port}"
        self.config = base / "models.config"
        self.head: RayNode | None = None
        self.server: Served | None = None

    def serve_models(self, *names: str) -> None:
        """Rewrite the model config file (the server re-reads it every second)."""
        self.config.write_text(
            "model_config_list {\n"
            + "".join(
                f'config {{ name: "{n}" base_path: "{self.base / "models" / n}" '
                'model_platform: "tensorflow" }\n'
                for n in names
            )
            + "}\n"
        )

    def status(self) -> dict:
        return requests.get(f"{self.url}/v1/aspire/status", timeout=30).json()

    def state(self, name: str) -> tuple[str, str, str]:
        r = requests.get(f"{self.url}/v1/models/{name}", timeout=30)
        if r.status_code != 200:
            return ("", "", r.text)
        [s] = r.json()["model_version_status"]
        return s["state"], s["status"]["error_code"], s["status"]["error_message"]

    def hosts(self) -> list[str]:
        """The nodes the manager's inventory holds now."""
        return sorted(h["node"] for h in self.status()["resources"]["hosts"])

    def dump(self) -> None:
        if self.server is not None:
            print("".join(self.server.out.lines[-150:]))


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    base = tmp_path_factory.mktemp("capacity")
    for name in ("first", "grow", "huge"):
        shutil.copytree(HALF_PLUS_TWO, base / "models" / name / "1")
    settings = base / "aspire.json"
    settings.write_text(json.dumps({"models": {"huge": {"device": "cpu", "ram": "1TiB"}}}))
    g = Grown(base, free_port(), free_port())
    g.serve_models("first")
    temp = tempfile.mkdtemp(prefix="aspire-as-", dir="/tmp")  # short: Ray's socket paths
    scaling = base / "autoscaling.yaml"
    scaling.write_text(json.dumps(autoscaling_config(g.gcs)))
    try:
        g.head = RayNode(
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={g.gcs.rsplit(':', 1)[1]}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--autoscaling-config={scaling}",
            f"--temp-dir={temp}",
            env={"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"},
        )
        g.server = Served(
            f"--address={g.gcs}",
            f"--model_config_file={g.config}",
            "--model_config_file_poll_wait_seconds=1",
            f"--aspire_config_file={settings}",
            f"--capacity_wait_s={WAIT_S}",
            "--num_cpus_per_replica=1",
            "--proxy_location=HeadOnly",
            f"--rest_api_port={g.port}",
            "--port=0",
        )
        with g.server:
            yield g
    finally:
        if g.head is not None:
            g.head.stop()  # the nodes the autoscaler launched are of the head's session


def test_a_version_that_fits_only_on_a_new_node_waits_as_loading_and_is_served_from_it(grown):
    [head] = grown.hosts()
    assert grown.state("first")[0] == "AVAILABLE"
    asked = time.monotonic()
    grown.serve_models("first", "grow", "huge")
    seen = wait_for(
        lambda: grown.status()["capacity_waits"].get("grow"), 30, 0.1, what="grow to wait"
    )
    wait = seen["1"]
    assert wait["bundles"] == [{"CPU": 1.0}]
    assert "needs 1 Ray CPUs (--num_cpus_per_replica)" in wait["reason"]
    assert wait["until"] - wait["since"] == pytest.approx(WAIT_S)
    state = grown.state("grow")
    assert state[:2] in {("LOADING", "OK"), ("AVAILABLE", "OK")}  # the node may be up already
    try:
        wait_for(lambda: grown.state("grow")[0] == "AVAILABLE", WAIT_S + 30, 0.5, what="grow")
    except AssertionError:
        grown.dump()
        raise
    took = time.monotonic() - asked
    [placement] = grown.status()["placements"]["grow"]["1"]
    assert placement["node_id"] != head  # on the node the autoscaler added
    assert placement["node_id"] in grown.hosts()
    r = requests.post(f"{grown.url}/v1/models/grow:predict", json={"instances": [1.0]}, timeout=30)
    assert r.json() == {"predictions": [2.5]}
    print(f"grow: waited for capacity, AVAILABLE on a new node {took:.1f} s after it was added")


def test_a_version_that_fits_no_node_type_ends_resource_exhausted_once_its_wait_runs_out(grown):
    wait = wait_for(
        lambda: (
            grown.status()["capacity_waits"].get("huge", {}).get("1")
            or grown.state("huge")[0] == "END"
        ),
        60,
        what="huge to wait or end",
    )
    if isinstance(wait, dict):
        assert wait["bundles"] == [{"CPU": 1.0, "memory": float(1024**4)}]
    wait_for(lambda: grown.state("huge")[0] == "END", WAIT_S + 30, 0.5, what="huge to end")
    state, code, message = grown.state("huge")
    assert code == "RESOURCE_EXHAUSTED"
    assert "needs 1024.0 GiB of host RAM" in message
    assert message.endswith(f"no node with room joined in {WAIT_S} s (--capacity_wait_s)")
    assert len(grown.hosts()) == 2  # no node was launched for it: head and grow's worker
    assert "huge" not in grown.status()["capacity_waits"]


def test_a_node_left_idle_after_its_version_unloads_goes_back_through_the_idle_timeout(grown):
    [placement] = grown.status()["placements"]["grow"]["1"]
    worker = placement["node_id"]
    grown.serve_models("first")
    unloaded = time.monotonic()
    wait_for(lambda: grown.state("grow")[0] == "END", 60, 0.5, what="grow to unload")
    wait_for(
        lambda: worker not in grown.hosts(), 60 * IDLE_TIMEOUT_MINUTES + 120, 1, what="removal"
    )
    print(
        f"the worker left {time.monotonic() - unloaded:.1f} s after its version was unloaded "
        f"(idle timeout {60 * IDLE_TIMEOUT_MINUTES:.0f} s)"
    )
    assert grown.state("first")[0] == "AVAILABLE"
