"""A real two-node Ray cluster on one machine: `ray start --head` (no GPUs) plus a worker with 2
logical GPUs, and `aspire serve --address` joining it. A GPU version must land on the worker, a
CPU version may land anywhere; killing the worker must make status report the GPU version not
serving while Aspire keeps serving the rest. Every process the test starts is killed at the end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import DATA, Served, free_port, wait_for

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).parent / "ray")
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"


class RayNode:
    """`ray start ... --block` in its own session; stop() kills the whole session (raylet, GCS,
    workers, and the Aspire actors running on the node), never another Ray on this machine."""

    def __init__(self, *args: str, env: dict | None = None):
        env = {**os.environ, "RAY_AUTH_MODE": "token", **(env or {})}  # token: Ray 2.60's default
        self.proc = subprocess.Popen(
            [RAY, "start", *args, "--disable-usage-stats", "--block"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines = []
        for line in self.proc.stdout:  # until Ray says it runs (or the command ends)
            self.lines.append(line)
            if "Ray runtime started" in line:
                break
        assert self.proc.poll() is None, "".join(self.lines[-30:])
        import threading

        threading.Thread(
            target=lambda: [self.lines.append(line) for line in self.proc.stdout], daemon=True
        ).start()

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


def test_gpu_version_lands_on_the_gpu_worker_and_is_reported_when_the_worker_dies(tmp_path):
    base = tmp_path / "models"
    for name in ("on_gpu", "on_cpu"):
        shutil.copytree(HALF_PLUS_TWO, base / name / "1")
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
            for n in ("on_gpu", "on_cpu")
        )
        + "}\n"
    )
    settings = tmp_path / "aspire.json"
    settings.write_text(
        json.dumps(
            {"models": {"on_gpu": {"device": "gpu", "vram": "4GiB"}, "on_cpu": {"device": "cpu"}}}
        )
    )
    gcs_port, port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    # The head's GCS health-checks the nodes every second and declares a node dead after 3
    # failed checks (Ray's defaults: 3 s and 5), so the worker's death is known in seconds.
    head = RayNode(
        "--head",
        f"--port={gcs_port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        env={"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"},
    )
    worker = None
    try:
        # A node address of its own on loopback, so the driver and the manager find the head's.
        worker = RayNode(
            f"--address=127.0.0.1:{gcs_port}",
            "--num-cpus=2",
            "--num-gpus=2",
            "--node-ip-address=127.0.0.2",
        )

        def status():
            return requests.get(f"{url}/v1/aspire/status", timeout=30).json()

        def state(name):
            try:
                r = requests.get(f"{url}/v1/models/{name}/versions/1", timeout=10).json()
            except requests.RequestException:  # Serve replacing a replica that ran on the worker
                return ("", "", "")
            if "model_version_status" not in r:
                return ("", "", "")
            s = r["model_version_status"][0]
            return s["state"], s["status"]["error_code"], s["status"]["error_message"]

        with Served(
            f"--address=127.0.0.1:{gcs_port}",
            f"--model_config_file={config}",
            f"--aspire_config_file={settings}",
            "--gpus=2x16GiB",
            "--proxy_location=HeadOnly",
            f"--rest_api_port={port}",
            "--port=0",
            "--rest_api_host=127.0.0.1",
        ) as server:
            described = status()
            [gpu_row, _] = described["resources"]["gpus"]
            worker_node = gpu_row["node"]
            nodes = {h["node"] for h in described["resources"]["hosts"]}
            assert len(nodes) == 2 and worker_node in nodes
            [on_gpu] = described["placements"]["on_gpu"]["1"]
            [on_cpu] = described["placements"]["on_cpu"]["1"]
            assert on_gpu["node_id"] == worker_node  # only the worker has GPUs
            assert on_gpu["cuda_visible_devices"] in ("0", "1")
            assert on_cpu["cuda_visible_devices"] == ""  # CPU replicas see no GPU
            for name in ("on_gpu", "on_cpu"):
                r = requests.post(
                    f"{url}/v1/models/{name}:predict", json={"instances": [1.0]}, timeout=30
                )
                assert r.json() == {"predictions": [2.5]}
            print(
                f"on_gpu on the worker {worker_node[:12]} GPU {on_gpu['cuda_visible_devices']}; "
                f"on_cpu on {'the worker' if on_cpu['node_id'] == worker_node else 'the head'}"
            )

            worker.stop()  # the GPU node dies
            died = time.monotonic()
            try:
                wait_for(
                    lambda: state("on_gpu")[:2] == ("END", "RESOURCE_EXHAUSTED"),
                    180,
                    0.5,
                    what="on_gpu reported as not serving, with no GPU left to re-place it on",
                )
            except AssertionError:
                print(
                    "".join(
                        line for line in server.out.lines if "aspire" in line or "rror" in line
                    )[-8000:]
                )
                raise
            print(f"on_gpu reported END {time.monotonic() - died:.1f} s after its node was killed")
            assert server.out.find(r"Servable \{name: on_gpu version: 1\} lost its replicas: node")
            assert "no GPUs are known" in state("on_gpu")[2]
            r = requests.post(
                f"{url}/v1/models/on_gpu:predict", json={"instances": [1.0]}, timeout=30
            )
            assert r.status_code == 404 and "error" in r.json()
            # The CPU version keeps serving (re-placed on the head if it was on the worker).
            wait_for(lambda: state("on_cpu")[0] == "AVAILABLE", 180, 0.5, what="on_cpu serving")
            r = requests.post(
                f"{url}/v1/models/on_cpu:predict", json={"instances": [1.0]}, timeout=30
            )
            assert r.json() == {"predictions": [2.5]}
            assert status()["placements"]["on_cpu"]["1"][0]["node_id"] != worker_node
        assert server.exit_code == 0
        # Stopping Aspire leaves the cluster up.
        assert head.proc.poll() is None
    finally:
        if worker is not None:
            worker.stop()
        head.stop()
