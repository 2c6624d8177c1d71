"""Running one Serve application of Aspire's and waiting until it answers: what a version's own
replicas (cluster/backend/serve_backend.py) and a shared host (cluster/backend/shared_hosts.py)
have in common.

`Launcher` holds the server-wide replica options and the stop signal: once `cancel()` is
called (the server is stopping), every wait in flight, and every later one, raises CANCELLED
at its next check, so a stop never waits for a replica to load.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from ray import serve
from ray.serve import Deployment

from config.options import ReplicaOptions
from core.contracts import ReplicaPing
from core.errors import AspireError
from deployments.replica.servable import VersionSpec
from policies.admission import Placement


def deploy_failure_message(text: str) -> str:
    """The useful line of a Serve DEPLOY_FAILED message (it embeds the replica's traceback)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("core.errors.AspireError:", "AspireError:")):
            return line.split(":", 1)[1].strip()
    return text.strip().splitlines()[-1].strip() if text.strip() else "deployment failed"


def deployment(cls: type) -> Deployment:
    """A class `@serve.deployment` decorated, as the `Deployment` it is (type checkers see the
    class)."""
    return cast(Deployment, cls)


def servable_id(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"


def replica_env(app: str, placement: Placement | None) -> dict[str, str]:
    env = {"ASPIRE_SERVABLE": app}  # lets the NVML inventory tell Aspire's processes apart
    if placement is not None:
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ""
                if placement.gpu_index is None
                else str(placement.gpu_index),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA numbers GPUs as NVML does
                "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
            }
        )
    return env


class Launcher:
    """Serve applications' options, and the waits until they run and answer."""

    def __init__(self, options: ReplicaOptions, load_timeout_s: float):
        self.options = options
        self.load_timeout_s = load_timeout_s
        self._cancelled = threading.Event()  # the server is stopping: loads in flight give up

    def cancel(self) -> None:
        self._cancelled.set()

    def check_cancelled(self, servable: str) -> None:
        if self._cancelled.is_set():
            raise AspireError(f"Loading of servable {servable} cancelled", "CANCELLED")

    def actor_options(self, app: str, placement: Placement | None) -> dict[str, Any]:
        """Ray actor options of an application's replicas, pinned to the placement's node."""
        opts = self.options
        actor_options: dict[str, Any] = {
            "num_cpus": opts.num_cpus,
            "num_gpus": 0,
            "runtime_env": {"env_vars": replica_env(app, placement)},
            **opts.extra_actor_options,
        }
        if placement is not None:
            actor_options["label_selector"] = {"ray.io/node-id": placement.node_id}
        return actor_options

    def spec(self, name: str, version: int, path: str, gpu_limit: int | None) -> VersionSpec:
        """What loads the version in a replica or a host, with the server-wide options."""
        opts = self.options
        return VersionSpec(
            name,
            version,
            path,
            tuple(opts.tags),
            max(1, opts.num_request_iterations_for_warmup) if opts.enable_model_warmup else None,
            gpu_limit,
            opts.batching,
            (opts.intra_op_threads, opts.inter_op_threads),
            opts.run_timeout_ms,
            opts.tensor_content,
            opts.session_config,
            opts.gpu_memory_fraction,
            opts.enable_signature_method_name_check,
        )

    def ping(self, handle: Any, servable: str) -> ReplicaPing:
        """The replica's answer once its load is done, polled so a stop cancels the wait."""
        response = handle.ping.remote()
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            self.check_cancelled(servable)
            try:
                answer: ReplicaPing = response.result(timeout_s=0.5)
                return answer
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AspireError(
                        f"Servable {servable} did not answer in {self.load_timeout_s:.0f} s",
                        "DEADLINE_EXCEEDED",
                    ) from None

    def wait_running(self, app: str, servable: str) -> None:
        """Wait for the application to run. A replica Ray cannot schedule (Serve reports it after
        30 s) fails the load with RESOURCE_EXHAUSTED and Serve's numbers, instead of pending."""
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            self.check_cancelled(servable)
            status = serve.status().applications.get(app)
            if status is not None:
                if status.status == "RUNNING":
                    return
                if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    details = [d.message for d in status.deployments.values() if d.message]
                    message = deploy_failure_message("\n".join(details) or status.message)
                    raise AspireError(
                        message, "RESOURCE_EXHAUSTED" if "Unschedulable" in message else "UNKNOWN"
                    )
                for deployment in status.deployments.values():
                    text = deployment.message or ""
                    if "to be scheduled" in text:
                        detail = text[text.find("Resources required") :].split(" Use `ray status`")[
                            0
                        ]
                        raise AspireError(
                            f"Replicas of servable {servable} could not be scheduled "
                            f"on the cluster: {detail}",
                            "RESOURCE_EXHAUSTED",
                        )
            time.sleep(0.2)
        raise AspireError(
            f"Servable {servable} did not start in {self.load_timeout_s:.0f} s", "DEADLINE_EXCEEDED"
        )
