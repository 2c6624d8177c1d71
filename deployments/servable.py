"""One servable version = one Ray Serve application holding one deployment.

`ServableDeployment` replicas each load the version with the Loader and answer inference calls
through the shared request core (deployments/inference.py). `ServeBackend` is what the manager
calls to create and delete those deployments; a version is reported loaded only once its
deployment is RUNNING and a replica has answered a call.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field

from ray import serve

from deployments import inference, proto_api
from deployments.errors import AspireError
from deployments.loader import SavedModelLoader
from deployments.warmup import run_warmup

log = logging.getLogger("aspire.servable")

APP_PREFIX = "aspire-servable-"


def app_name(name: str, version: int) -> str:
    """A Serve application name for (name, version): readable, unique even for odd model names."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{APP_PREFIX}{safe}-{digest}-v{version}"


@serve.deployment
class ServableDeployment:
    def __init__(self, name: str, version: int, path: str, tags: tuple[str, ...],
                 warmup_iterations: int | None = 1):
        self.name, self.version = name, version
        self.model, self.load_error = None, None
        started = time.monotonic()
        # A failed load (warmup included) is kept as state and reported by ping(), not raised:
        # raising would make Serve retry the constructor and bury TF's message in a traceback.
        try:
            self.model = SavedModelLoader(path, tags).load()
            if warmup_iterations is not None:  # None: --enable_model_warmup=false
                run_warmup(self.model, path, name, version, warmup_iterations)
        except AspireError as err:
            self.load_error = (err.code, err.message)
        except Exception as exc:
            self.load_error = ("UNKNOWN", f"{type(exc).__name__}: {exc}")
        log.info("load of {name: %s version: %d} from %s: %s in %.2f s", name, version, path,
                 self.load_error or "OK", time.monotonic() - started)

    def ping(self) -> dict:
        return {"version": self.version, "error": self.load_error}

    def rest(self, verb: str, doc: dict) -> tuple[str, str]:
        if self.load_error is not None:
            return self.load_error
        return inference.handle_rest(self.model, verb, doc)

    def grpc(self, method: str, request: bytes, name: str, version: int,
             tensor_content: bool) -> tuple[str, bytes | str]:
        if self.load_error is not None:
            return self.load_error
        return proto_api.handle(self.model, method, request, name, version, tensor_content)

    def metadata(self) -> tuple[str, object]:
        if self.load_error is not None:
            return self.load_error
        return "OK", inference.signature_metadata(self.model)

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None:
            model.unload()


@dataclass
class ReplicaOptions:
    """How each version's deployment runs: copied into every version's deployment options."""

    num_replicas: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    graceful_shutdown_timeout_s: float = 20.0
    tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0  # TF Serving: used only when > 0, else 1
    extra_actor_options: dict = field(default_factory=dict)


def _deploy_failure_message(text: str) -> str:
    """The useful line of a Serve DEPLOY_FAILED message (it embeds the replica's traceback)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("deployments.errors.AspireError:", "AspireError:")):
            return line.split(":", 1)[1].strip()
    return text.strip().splitlines()[-1].strip() if text.strip() else "deployment failed"


class ServeBackend:
    """Creates and deletes version deployments on Ray Serve (called from the manager)."""

    def __init__(self, options: ReplicaOptions, load_timeout_s: float = 600.0):
        self.options = options
        self.load_timeout_s = load_timeout_s
        self.num_replicas: dict[str, int] = {}  # per-model overrides from Aspire's side file

    def load(self, name: str, version: int, path: str) -> dict:
        loader = SavedModelLoader(path, self.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()  # cheap: refuses a version that cannot load before starting replicas
        app = app_name(name, version)
        opts = self.options
        actor_options = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus,
                         **opts.extra_actor_options}
        deployment = ServableDeployment.options(
            name="servable", num_replicas=self.num_replicas.get(name, opts.num_replicas),
            ray_actor_options=actor_options,
            max_ongoing_requests=opts.max_ongoing_requests,
            graceful_shutdown_timeout_s=opts.graceful_shutdown_timeout_s,
            health_check_period_s=5)
        try:
            warmup = (max(1, opts.num_request_iterations_for_warmup)
                      if opts.enable_model_warmup else None)
            handle = serve.run(deployment.bind(name, version, path, tuple(opts.tags), warmup),
                               name=app, route_prefix=None)
            answer = handle.ping.remote().result(timeout_s=self.load_timeout_s)
        except Exception as exc:
            self._delete(app)
            raise AspireError(_deploy_failure_message(str(exc)), "UNKNOWN") from None
        if answer["error"] is not None:
            self._delete(app)
            code, message = answer["error"]
            raise AspireError(message, code)
        return {"app": app, "deployment": "servable", "ram_bytes": ram_bytes}

    def unload(self, name: str, version: int, where: dict) -> None:
        self._delete(where.get("app") or app_name(name, version))

    @staticmethod
    def _delete(app: str) -> None:
        try:
            serve.delete(app)
        except Exception as exc:
            log.warning("deleting %s failed: %s", app, exc)
