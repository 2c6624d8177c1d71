"""One real local Ray cluster, Serve and Aspire for the integration tests, on loopback.

Aspire is started through cluster/launcher.py, the same code `aspire serve` runs, with several
models from tests/data (TensorFlow Serving's own test models). Tests that need a model of their
own add it with `aspire.add_model(...)`, which goes through the manager's model-list path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.ports import free_port  # noqa: F401 (re-exported to the test modules)

DATA = Path(__file__).resolve().parent.parent / "data"

BASE_MODELS = {
    "half_plus_two": "saved_model_half_plus_two_cpu",
    "saved_model_half_plus_two_2_versions": "saved_model_half_plus_two_2_versions",
    "half_plus_two_tf2": "saved_model_half_plus_two_tf2_cpu",
    "half_plus_three": "saved_model_half_plus_three",
    "counter": "saved_model_counter",
    "bad_half_plus_two": "bad_half_plus_two",
}


def the_router_app() -> str:
    """The router application of a one-node cluster (cluster/backend/routers.py: one per node)."""
    from cluster.backend.routers import router_apps

    [app] = router_apps()
    return app


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class ClosedLoop:
    """`clients` connections predicting back to back; every answer and failure is recorded with
    the time it was received."""

    def __init__(self, url: str, clients: int = 8):
        self.url, self.stop = url, threading.Event()
        self.answers, self.failures = [], []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                r = session.post(self.url, json={"instances": [1.0]}, timeout=60)
                if r.status_code == 200:
                    self.answers.append((time.monotonic(), r.json()["predictions"][0]))
                else:
                    self.failures.append((r.status_code, r.text))
            except requests.RequestException as exc:
                self.failures.append(("transport", repr(exc)))

    def wait_more(self, n: int, timeout_s: float = 60):
        target = len(self.answers) + n
        wait_for(lambda: len(self.answers) >= target, timeout_s, what=f"{n} more answers")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


ASPIRE = str(Path(sys.executable).parent / "aspire")


class Output:
    def __init__(self, proc):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def find(self, pattern):
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return m
        return None


class Served:
    """`aspire serve FLAGS` as a user runs it: waits for the ready line, Ctrl-C on exit.
    `exit_code` holds the status the process ended with."""

    def __init__(self, *flags: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [ASPIRE, "serve", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.out = Output(self.proc)
        self.exit_code = None

    def __enter__(self):
        wait_for(
            lambda: self.out.find(r"Exporting HTTP/REST API") or self.proc.poll() is not None,
            240,
            0.2,
            what="aspire serve to report ready",
        )
        assert self.proc.poll() is None, "".join(self.out.lines[-40:])
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.exit_code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.out.thread.join(10)


class Aspire:
    def __init__(self, url: str, manager, models: list, grpc_target: str = ""):
        self.url = url
        self.grpc_target = grpc_target
        self.manager = manager
        self.models = models

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return requests.post(self.url + path, timeout=60, **kw)

    def states(self, name: str) -> dict[int, tuple[str, str]]:
        r = self.get(f"/v1/models/{name}")
        if r.status_code != 200:
            return {}
        return {
            int(s["version"]): (s["state"], s["status"]["error_code"])
            for s in r.json()["model_version_status"]
        }

    def wait_state(self, name: str, version: int, state: str, timeout_s: float = 120.0):
        return wait_for(
            lambda: self.states(name).get(version, ("",))[0] == state,
            timeout_s,
            what=f"{name} v{version} {state}",
        )

    def remove_added_models(self, timeout_s: float = 180.0) -> list[str]:
        """Unload every model a test added (back to BASE_MODELS) and wait until their versions
        are unloaded and their Serve applications deleted. Returns the names removed."""
        import ray
        from ray import serve

        from core.names import app_name

        added = [m.name for m in self.models if m.name not in BASE_MODELS]
        if not added:
            return []
        self.models = [m for m in self.models if m.name in BASE_MODELS]
        ray.get(self.manager.set_models.remote(self.models))
        prefixes = tuple(app_name(name, 0)[:-1] for name in added)  # "...-v" of every version
        wait_for(
            lambda: not any(app.startswith(prefixes) for app in serve.status().applications),
            timeout_s,
            0.1,
            what=f"the applications of {added} deleted",
        )
        return added

    def add_model(self, name: str, base_path: str, policy=None):
        import ray

        from config.model_config import ModelSource
        from policies.aspired import Latest

        self.models = [m for m in self.models if m.name != name]
        self.models.append(ModelSource(name, str(base_path), policy or Latest(1)))
        ray.get(self.manager.set_models.remote(self.models))


@pytest.fixture(scope="session")
def aspire():
    import ray

    from cluster import launcher
    from config.model_config import ModelSource
    from config.options import BatchingOptions, ReplicaOptions, ServerOptions
    from core.names import NAMESPACE

    port, grpc_port = free_port(), free_port()
    launcher.set_serve_env()
    # "local": always a new Ray of our own, never one found on the machine (ray start writes
    # /tmp/ray/ray_current_cluster, which a bare ray.init() would join)
    ray.init(
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        num_cpus=8,
        num_gpus=0,
        log_to_driver=os.environ.get("ASPIRE_TEST_LOGS") == "1",
    )
    from policies.aspired import All, Latest

    models = [
        ModelSource(
            name,
            str(DATA / d),
            All() if name == "saved_model_half_plus_two_2_versions" else Latest(1),
        )
        for name, d in BASE_MODELS.items()
    ]
    from cluster.control_plane import ManagerConfig

    config = ManagerConfig(
        models=models,
        poll_wait_s=0.5,
        num_load_threads=4,
        max_num_load_retries=1,
        load_retry_interval_s=0.1,
        # Serve's health checks at the server's defaults (5 s, 30 s): a
        # replica slowed by a loaded machine is never replaced mid-test.
        # The hung-replica test shortens them for its own model.
        # --enable_batching --enable_per_model_batching_parameters: a
        # version with a batching_params.pbtxt is batched (no base model
        # has one; test_export_matrix.py adds batched copies)
        # shared hosts (test_shared_hosts.py) run two replicas each, so a killed one fails
        # over to the other
        replica=ReplicaOptions(
            num_cpus=0.25, batching=BatchingOptions(per_model=True), shared_host_replicas=2
        ),
        # routers poll the map every second, so a restarted manager's
        # grace before deleting anything is 3 s (7 s at the default 5 s)
        router_poll_s=1.0,
    )
    options = ServerOptions(
        rest_api_host="127.0.0.1",
        rest_api_port=port,
        rest_api_timeout_in_ms=30000,
        grpc_port=grpc_port,
        enable_grpc_healthcheck_service=True,
    )
    manager = launcher.start(config, options)
    pending = launcher.wait_initial_load(manager, list(BASE_MODELS), 300)
    assert not pending, f"models never settled: {pending}"
    assert ray.get(manager.settle.remote(300)), "versions still loading after 300 s"
    yield Aspire(f"http://127.0.0.1:{port}", manager, models, f"127.0.0.1:{grpc_port}")
    launcher.stop(manager)
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _added_models_unloaded_after_the_module(request):
    """Models a module added to the shared cluster are unloaded when the module ends, so the
    cluster does not collect a replica per added model (each holds most of a GiB) for the rest
    of the run. Runs after the module's own fixtures have finished."""
    yield
    uses_cluster = any(
        "aspire" in item.fixturenames
        for item in request.session.items
        if item.module is request.module
    )
    if uses_cluster:
        request.getfixturevalue("aspire").remove_added_models()


@pytest.fixture
def model_dir(tmp_path):
    """An empty base path plus a helper that publishes a version directory atomically."""
    base = tmp_path / "model"
    base.mkdir()

    def publish(version: int, source: str):
        staging = tmp_path / f".staging-{version}"
        shutil.copytree(DATA / source / "00000123", staging)
        staging.rename(base / str(version))  # the poller never sees a half-copied version

    return base, publish
