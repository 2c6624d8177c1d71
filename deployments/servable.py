"""One servable version = one Ray Serve application per placement of its replicas.

`ServableDeployment` replicas each load the version with the Loader and answer inference calls
through the shared request core (deployments/inference.py). `ServeBackend` is what the manager
calls to size, create and delete them; a version is reported loaded only once its deployments
are RUNNING and a replica of each has answered a call.

Placement: the manager's admission reserves each replica on one node and, for GPU versions, one
GPU of that node (policies/admission.py). Replicas that share a (node, GPU) form one Serve
application; the version's applications are listed in `where["apps"]` with their replica counts,
and the router spreads requests over them in that proportion. Each application is pinned to its
node with Ray's node-id label selector, and Aspire, not Ray, assigns the GPU: the replica is
started with `CUDA_VISIBLE_DEVICES` set to the reserved GPU's index (NVML/PCI order; "" for CPU
replicas so TensorFlow never touches a GPU it holds no reservation on), Ray's own GPU bookkeeping
is not asked for, and TensorFlow inside the replica is capped to the reservation less the CUDA
context (policies/admission.py `tf_memory_limit_bytes`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ray import serve

from core import metrics
from core.errors import AspireError
from core.names import app_name
from deployments import inference, json_tensor, proto_api
from deployments.autoscaling import DIRECT_ONGOING
from deployments.loader import SavedModelLoader
from deployments.replica_service import METADATA_KEY, REST_METHODS, ReplicaService, encode_answer
from deployments.warmup import run_warmup
from policies.admission import Need, Placement, replica_need, tf_memory_limit_bytes

log = logging.getLogger("aspire.servable")


def _metrics_shipper() -> metrics.Shipper:
    """This replica's recorder, shipped to the manager's store every second. Runtime latency
    is the time inside the replica: tensor conversion and the session run."""
    import ray

    from core.names import MANAGER_NAME, NAMESPACE

    manager = []

    def send(deltas):
        if not manager:
            manager.append(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
        try:
            ray.get(manager[0].apply_metrics.remote(deltas), timeout=10)
        except Exception:
            manager.clear()  # looked up again next time: the manager may have been restarted
            raise

    return metrics.Shipper(metrics.Recorder(), send)


def inference_threads(max_concurrency: int, batched: bool) -> int:
    """Threads of a replica's inference pool. A batched version needs one per request it may
    hold (a request waiting for its batch holds its thread). Otherwise the pool needs no more
    threads than the replica has cores: TF releases the GIL while it runs, and more threads only
    fight over the GIL for the JSON and proto work (64 threads answered half_plus_two at 0.87x
    the throughput of 1 or 2 on 2 cores; bench/README.md)."""
    if batched:
        return max(1, max_concurrency)
    return max(1, min(max_concurrency, max(2, len(os.sched_getaffinity(0)))))


@serve.deployment
class ServableDeployment:
    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        tags: tuple[str, ...],
        warmup_iterations: int | None = 1,
        gpu_memory_limit_bytes: int | None = None,
        batching: "BatchingOptions | None" = None,
        threads: tuple[int, int] = (0, 0),
        max_concurrency: int = 64,
        run_timeout_ms: int = 0,
        data_key: str = "",
        tensor_content: bool = False,
        shutdown_grace_s: float = 20.0,
    ):
        self.name, self.version = name, version
        self._tensor_content = tensor_content  # --enable_serialization_as_tensor_content
        self._shutdown_grace_s = shutdown_grace_s
        self._service: ReplicaService | None = None
        self._metadata_body: bytes | None = None
        self.model = None
        self.load_error: AspireError | None = None  # crosses Ray in ping(): it pickles
        self.measured_vram_bytes = None
        self.session_threads = None
        self._ongoing = 0  # inference calls in this replica now (ping reports it)
        self._calls = {"direct": 0, "handle": 0}  # calls answered, by path (ping reports them)
        self._direct_ongoing = 0  # direct calls in flight: Serve's autoscaler cannot see them
        self._shipper = _metrics_shipper()
        started = time.monotonic()
        params = None
        # A failed load (warmup included) is kept as state and reported by ping(), not raised:
        # raising would make Serve retry the constructor and bury TF's message in a traceback.
        try:
            self.model = SavedModelLoader(path, tags).load(
                intra_op_threads=threads[0],
                inter_op_threads=threads[1],
                gpu_memory_limit_bytes=gpu_memory_limit_bytes,
                run_timeout_ms=run_timeout_ms,
            )
            self.session_threads = list(self.model.session_threads)
            params = batching.parameters_for(path) if batching is not None else None
            if params is not None:
                from deployments.batching import BatchedModel

                labels = metrics.labels_for(metrics.ASPIRE_BATCH_TASKS, name, version)
                self.model = BatchedModel(
                    self.model,
                    params,
                    lambda tasks, _padding: self._shipper.recorder.observe(
                        metrics.ASPIRE_BATCH_TASKS, labels, tasks
                    ),
                )
            if warmup_iterations is not None:  # None: --enable_model_warmup=false
                self._warmup(path, warmup_iterations)
            if gpu_memory_limit_bytes:
                from core.nvml import process_vram_bytes

                self.measured_vram_bytes = process_vram_bytes(os.getpid())  # None without NVML
        except AspireError as err:
            self.load_error = err
        except Exception as exc:
            self.load_error = AspireError(f"{type(exc).__name__}: {exc}", "UNKNOWN")
        self._pool = ThreadPoolExecutor(
            inference_threads(max_concurrency, params is not None),
            thread_name_prefix="aspire-infer",
        )
        if data_key and self.load_error is None:  # the direct data path (replica_service.py)
            import ray

            try:
                self._service = ReplicaService(
                    self._submit, data_key, ray.util.get_node_ip_address()
                )
                self._service.start()
            except Exception as exc:  # noqa: BLE001 - reported like a failed load
                self.load_error = AspireError(
                    f"The replica's call service did not start: {exc}", "UNAVAILABLE"
                )
        log.info(
            "load of {name: %s version: %d} from %s: %s in %.2f s",
            name,
            version,
            path,
            "OK" if self.load_error is None else f"{self.load_error.code}: {self.load_error}",
            time.monotonic() - started,
        )

    def _warmup(self, path: str, iterations: int) -> None:
        """run_warmup, recorded as TF Serving records it (latency and records read, by status)."""
        recorder, started, status, records = self._shipper.recorder, time.perf_counter(), "OK", 0
        try:
            records = run_warmup(self.model, path, self.name, self.version, iterations)
        except AspireError as err:
            status = err.code
            raise
        finally:
            if records or status != "OK":  # nothing is recorded without a warmup file
                recorder.observe(
                    metrics.TFS_MODEL_WARMUP_LATENCY,
                    metrics.labels_for(metrics.TFS_MODEL_WARMUP_LATENCY, path, status),
                    (time.perf_counter() - started) * 1e6,
                )
                recorder.inc(
                    metrics.TFS_MODEL_WARMUP_RECORDS_READ,
                    metrics.labels_for(metrics.TFS_MODEL_WARMUP_RECORDS_READ, path, status),
                    records,
                )

    def _runtime(self, api: str, started: float) -> None:
        if api in ("Predict", "Classify", "Regress"):
            self._shipper.recorder.observe(
                metrics.TFS_RUNTIME_LATENCY,
                metrics.labels_for(metrics.TFS_RUNTIME_LATENCY, self.name, api, "TF1"),
                (time.perf_counter() - started) * 1e6,
            )

    def ping(self) -> dict:
        import ray

        return {
            "version": self.version,
            "error": self.load_error,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "measured_vram_bytes": self.measured_vram_bytes,
            "session_threads": self.session_threads,
            "ongoing_requests": self._ongoing,
            "service_port": self._service.port if self._service is not None else None,
            "calls": dict(self._calls),
        }

    def record_replica_metadata(self) -> dict:
        """Published by Serve to every router with this replica's place in the running list:
        the port of the replica's own service (deployments/replica_service.py)."""
        return {METADATA_KEY: self._service.port} if self._service is not None else {}

    # Inference runs on the replica's own pool of long-lived threads (inference_threads: one per
    # core, or one per request it may hold when batched, so requests waiting for a batch never
    # starve the batch), not on Serve's default path for sync methods, which measured slower.
    async def _answer(self, method: str, payload: bytes) -> bytes:
        """One call, direct or through Serve's handle: method and request bytes in, the answer
        encoded as replica_service.encode_answer out."""
        if self.load_error is not None:
            return encode_answer(self.load_error.code, self.load_error.message)
        self._ongoing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._work, method, payload
            )
        finally:
            self._ongoing -= 1

    def _submit(self, method: str, payload: bytes) -> asyncio.Future:
        """A direct call (deployments/replica_service.py), on the service's loop: the future of
        its encoded answer. Cancelling it before the pool starts the work skips the work."""
        loop = self._service.loop
        if self.load_error is not None:
            future = loop.create_future()
            future.set_result(encode_answer(self.load_error.code, self.load_error.message))
            return future
        self._calls["direct"] += 1
        self._direct_ongoing += 1
        self._ongoing += 1
        future = loop.run_in_executor(self._pool, self._work, method, payload)
        future.add_done_callback(self._direct_done)
        return future

    def _direct_done(self, _future) -> None:
        self._direct_ongoing -= 1
        self._ongoing -= 1

    def record_autoscaling_stats(self) -> dict:
        """Serve's hook, read periodically: direct calls in flight, which Serve's own request
        counts miss; deployments/autoscaling.py adds them to what handles report."""
        return {DIRECT_ONGOING: self._direct_ongoing}

    async def call(self, method: str, payload: bytes) -> bytes:
        """Serve's handle path (the routers' fallback): the same calls as the direct path."""
        self._calls["handle"] += 1
        return await self._answer(method, payload)

    def _work(self, method: str, payload: bytes) -> bytes:
        started = time.perf_counter()
        try:
            if method == "metadata":
                return encode_answer("OK", self._metadata())
            if method in REST_METHODS:
                code, text = inference.handle_rest(
                    self.model, method, json_tensor.parse_body(payload)
                )
                api = method.capitalize()
            else:
                code, text = proto_api.handle(
                    self.model, method, payload, self.name, self.version, self._tensor_content
                )
                api = method
            self._runtime(api, started)
            return encode_answer(code, text)
        except AspireError as err:
            return encode_answer(err.code, err.message)
        except Exception as exc:  # never a trace to the client; the log has it
            log.exception("%s on {name: %s version: %d} failed", method, self.name, self.version)
            return encode_answer("INTERNAL", f"Internal error: {type(exc).__name__}")

    def _metadata(self) -> bytes:
        """GET /metadata's body, as TF Serving prints it (computed once)."""
        if self._metadata_body is None:
            self._metadata_body = json.dumps(
                {
                    "model_spec": {
                        "name": self.name,
                        "signature_name": "",
                        "version": str(self.version),
                    },
                    "metadata": {"signature_def": inference.signature_metadata(self.model)},
                },
                indent=1,
            ).encode("utf-8")
        return self._metadata_body

    def __del__(self):
        service = getattr(self, "_service", None)
        if service is not None:  # routers stopped picking this replica; let its calls finish
            service.stop(self._shutdown_grace_s)
        shipper = getattr(self, "_shipper", None)
        if shipper is not None:
            shipper.flush()
            shipper.stop()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
        model = getattr(self, "model", None)
        if model is not None:
            model.unload()


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching flags: --enable_batching with --batching_parameters_file (already
    parsed into `parameters`), and --enable_per_model_batching_parameters, which reads
    batching_params.pbtxt in each version's directory instead (no file: that version is not
    batched)."""

    parameters: object | None = None  # config.batching_config.BatchingParameters
    per_model: bool = False

    def parameters_for(self, version_dir: str):
        if self.per_model:
            from config.batching_config import load_per_model_batching_parameters

            return load_per_model_batching_parameters(version_dir)
        return self.parameters


@dataclass
class ReplicaOptions:
    """How each version's deployment runs: copied into every version's deployment options."""

    num_replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 64  # per replica (the side file may set it per model)
    # Requests each router holds for a version while all its replicas are full; beyond it the
    # router answers 429 at once instead of letting latency grow without bound. -1: no limit.
    max_queued_requests: int = 1000
    graceful_shutdown_timeout_s: float = 20.0
    # How often Serve looks whether an unloading replica still has requests through its handle.
    # Serve first waits one such period unconditionally (2 s by default, for load balancers to
    # deregister the replica); Aspire's routers have acknowledged the new serving map before a
    # version is deleted, and direct calls drain in the replica itself (__del__), so a short
    # period only ends unloads sooner.
    graceful_shutdown_wait_loop_s: float = 0.25
    # Serve's health check of each replica: a replica that fails (or does not answer in time)
    # REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD = 3 checks in a row is replaced.
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    # Longest a TF session run may take (TF's RunOptions.timeout_in_ms); 0: no limit. The server
    # sets it to --rest_api_timeout_in_ms, so a request the router gave up on (504) stops using
    # a thread and CPU in the replica too.
    run_timeout_ms: int = 0
    tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0  # TF Serving: used only when > 0, else 1
    batching: BatchingOptions | None = None  # None: --enable_batching is off
    # TF session threads (--tensorflow_intra_op_parallelism / _inter_op_; 0: TF picks)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    tensor_content: bool = False  # --enable_serialization_as_tensor_content
    # Shared by routers and replicas: calls on a replica's own service must carry it
    # (deployments/replica_service.py). Kept in Serve's arguments in the GCS, like the rest of
    # the cluster's state; "" turns the direct path off (every call takes Serve's handle).
    data_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    extra_actor_options: dict = field(default_factory=dict)


def _deploy_failure_message(text: str) -> str:
    """The useful line of a Serve DEPLOY_FAILED message (it embeds the replica's traceback)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("core.errors.AspireError:", "AspireError:")):
            return line.split(":", 1)[1].strip()
    return text.strip().splitlines()[-1].strip() if text.strip() else "deployment failed"


def _groups(placements: list[Placement]) -> list[tuple[Placement, int]]:
    """Placements sharing a (node, GPU), in first-seen order, as (placement, replica count)."""
    counts: dict[tuple, list] = {}
    for p in placements:
        counts.setdefault((p.node_id, p.gpu_index), [p, 0])[1] += 1
    return [(p, n) for p, n in counts.values()]


def _replica_env(app: str, placement: Placement | None) -> dict[str, str]:
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


class ServeBackend:
    """Sizes, creates and deletes version deployments on Ray Serve (called from the manager)."""

    def __init__(self, options: ReplicaOptions, load_timeout_s: float = 600.0):
        self.options = options
        self.load_timeout_s = load_timeout_s
        self.settings: dict = {}  # model name -> config.aspire_config.ModelSettings

    def need(
        self, name: str, version: int, path: str, has_gpus: bool, measured_vram_bytes: int | None
    ) -> tuple[Need, int]:
        settings = self.settings.get(name)
        resources = SavedModelLoader(path, self.options.tags).estimate_resources()
        device = (settings and settings.device) or ("gpu" if has_gpus else "cpu")
        need = replica_need(
            device,
            variable_bytes=resources.variable_bytes,
            ram_estimate_bytes=resources.ram_bytes,
            declared_vram_bytes=settings.vram_bytes if settings else None,
            declared_ram_bytes=settings.ram_bytes if settings else None,
            measured_vram_bytes=measured_vram_bytes,
        )
        return need, self._replicas(name)

    def _replicas(self, name: str) -> int:
        """Replicas to reserve: the fixed count, or an autoscaled version's max_replicas."""
        settings = self.settings.get(name)
        if settings and settings.autoscaling:
            return settings.autoscaling.max_replicas
        return (settings and settings.num_replicas) or self.options.num_replicas

    def _scaling(self, name: str, counts: list[int]) -> list[dict]:
        """Serve options for each application of a version, given its reserved replica counts.
        Autoscaled: each application scales between its share of min_replicas (at least 1, so
        every reserved (node, GPU) keeps a warm replica) and its reserved count."""
        settings = self.settings.get(name)
        autoscaling = settings.autoscaling if settings else None
        if autoscaling is None:
            return [{"num_replicas": n} for n in counts]
        floors, left = [], autoscaling.min_replicas
        for n in counts:  # the first min_replicas reserved replicas, in placement order
            floors.append(max(1, min(n, left)))
            left -= min(n, left)
        return [
            {"autoscaling_config": autoscaling.serve_config(low, n)}
            for low, n in zip(floors, counts, strict=True)
        ]

    def _request_limits(self, name: str) -> tuple[int, int]:
        """(max_ongoing_requests, max_queued_requests) of a model: the side file's, else the
        server-wide options."""
        settings = self.settings.get(name)
        ongoing = settings and settings.max_ongoing_requests
        queued = settings.max_queued_requests if settings else None
        return (
            ongoing or self.options.max_ongoing_requests,
            self.options.max_queued_requests if queued is None else queued,
        )

    def _health_checks(self, name: str) -> tuple[float, float]:
        """(period, timeout) of Serve's health checks for a model's replicas: the side file's,
        else the server-wide options."""
        settings = self.settings.get(name)
        period = settings.health_check_period_s if settings else None
        timeout = settings.health_check_timeout_s if settings else None
        return (
            period or self.options.health_check_period_s,
            timeout or self.options.health_check_timeout_s,
        )

    def load(
        self, name: str, version: int, path: str, placements: list[Placement] | None = None
    ) -> dict:
        loader = SavedModelLoader(path, self.options.tags)
        ram_bytes = loader.estimate_resources().ram_bytes
        loader.validate()  # cheap: refuses a version that cannot load before starting replicas
        opts = self.options
        warmup = (
            max(1, opts.num_request_iterations_for_warmup) if opts.enable_model_warmup else None
        )
        groups = _groups(placements) if placements else [(None, self._replicas(name))]
        base = app_name(name, version)
        apps, replicas = [], []
        scaling = self._scaling(name, [n for _, n in groups])
        ongoing, queued = self._request_limits(name)
        check_period_s, check_timeout_s = self._health_checks(name)
        try:
            for i, (placement, count) in enumerate(groups):
                app = base if i == 0 else f"{base}-p{i}"
                apps.append([app, count])
                actor_options = {
                    "num_cpus": opts.num_cpus,
                    "num_gpus": 0,
                    "runtime_env": {"env_vars": _replica_env(app, placement)},
                    **opts.extra_actor_options,
                }
                if placement is not None:
                    actor_options["label_selector"] = {"ray.io/node-id": placement.node_id}
                limit = (
                    tf_memory_limit_bytes(placement.vram_bytes)
                    if placement is not None and placement.gpu_index is not None
                    else None
                )
                deployment = ServableDeployment.options(
                    name="servable",
                    ray_actor_options=actor_options,
                    **scaling[i],
                    max_ongoing_requests=ongoing,
                    max_queued_requests=queued,
                    graceful_shutdown_timeout_s=opts.graceful_shutdown_timeout_s,
                    graceful_shutdown_wait_loop_s=opts.graceful_shutdown_wait_loop_s,
                    health_check_period_s=check_period_s,
                    health_check_timeout_s=check_timeout_s,
                    # Aspire counts every request in its own metrics; Serve's per-call log line
                    # cost about 2 % of a replica's CPU
                    logging_config={"enable_access_log": False},
                )
                [handle] = serve.run_many(
                    [
                        serve.RunTarget(
                            deployment.bind(
                                name,
                                version,
                                path,
                                tuple(opts.tags),
                                warmup,
                                limit,
                                opts.batching,
                                (opts.intra_op_threads, opts.inter_op_threads),
                                ongoing,
                                opts.run_timeout_ms,
                                opts.data_key,
                                opts.tensor_content,
                                opts.graceful_shutdown_timeout_s,
                            ),
                            name=app,
                            route_prefix=None,
                        )
                    ],
                    wait_for_applications_running=False,
                )
                self._wait_running(app, f"{{name: {name} version: {version}}}")
                answer = handle.ping.remote().result(timeout_s=self.load_timeout_s)
                if answer["error"] is not None:  # the replica's load failed: its AspireError
                    raise answer["error"]
                autoscaled = scaling[i].get("autoscaling_config")
                replicas.append(
                    {
                        "app": app,
                        "replicas": count,
                        "min_replicas": autoscaled["min_replicas"] if autoscaled else count,
                        "node_id": answer["node_id"],
                        "pid": answer["pid"],
                        "gpu": None if placement is None else placement.gpu_index,
                        "vram_bytes": 0 if placement is None else placement.vram_bytes,
                        "cuda_visible_devices": answer["cuda_visible_devices"],
                        "measured_vram_bytes": answer["measured_vram_bytes"],
                        "session_threads": answer["session_threads"],
                    }
                )
        except AspireError:
            delete_apps([app for app, _ in apps])
            raise
        except Exception as exc:
            delete_apps([app for app, _ in apps])
            raise AspireError(_deploy_failure_message(str(exc)), "UNKNOWN") from None
        measured = [r["measured_vram_bytes"] for r in replicas if r["measured_vram_bytes"]]
        return {
            "apps": apps,
            "ram_bytes": ram_bytes,
            "placements": replicas,
            "measured_vram_bytes": max(measured) if measured else None,
            # what routers need besides the apps (deployments/router_core.py VersionAddress)
            "max_queued_requests": queued,
        }

    def _wait_running(self, app: str, servable: str) -> None:
        """Wait for the application to run. A replica Ray cannot schedule (Serve reports it after
        30 s) fails the load with RESOURCE_EXHAUSTED and Serve's numbers, instead of pending."""
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            status = serve.status().applications.get(app)
            if status is not None:
                if status.status == "RUNNING":
                    return
                if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    detail = [d.message for d in status.deployments.values() if d.message]
                    message = _deploy_failure_message("\n".join(detail) or status.message)
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

    def unload(self, name: str, version: int, where: dict) -> None:
        delete_apps([app for app, _ in where.get("apps") or [[app_name(name, version), 1]]])


def delete_apps(apps: list[str], timeout_s: float = 120.0) -> None:
    """Delete Serve applications and wait until they are gone (their replicas stopped).

    All deletions are asked for at once, then Serve's status is polled every 0.1 s: Serve's own
    blocking `serve.delete` deletes one application per call and polls once a second, which
    added up to a second to every unload. Failures are logged, never raised (an unload must
    go on)."""
    if not apps:
        return
    try:
        for app in apps:
            serve.delete(app, _blocking=False)
        deadline = time.monotonic() + timeout_s
        while set(apps) & set(serve.status().applications):
            if time.monotonic() > deadline:
                log.warning("applications %s not deleted after %.0f s", apps, timeout_s)
                return
            time.sleep(0.1)
    except Exception as exc:
        log.warning("deleting %s failed: %s", apps, exc)
