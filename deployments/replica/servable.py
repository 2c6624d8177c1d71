"""The servable deployment: the Ray Serve replica that holds one version of a model.

`ServableDeployment` replicas each load the version with the Loader and answer inference calls
through the shared request core (deployments/replica/inference.py), directly from the routers
(deployments/replica/call_service.py) or through Serve's handle. A failed load is kept as the
replica's state (`load_error`, reported by `ping()`), never raised. The manager creates and
deletes them through cluster/backend/serve_backend.py.

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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ray import serve

from config.options import BatchingOptions
from core import metrics
from core.contracts import ReplicaPing
from core.errors import AspireError
from core.metrics_shipper import Shipper
from deployments.replica import code_pages, inference, tfs_grpc_calls, v2_calls
from deployments.replica.autoscaling import DIRECT_ONGOING
from deployments.replica.call_service import ReplicaService
from deployments.replica.loader import SavedModelLoader, ServedModel
from deployments.replica.warmup import run_warmup
from deployments.wire import tfs_json
from deployments.wire.direct import METADATA_KEY, REST_METHODS, encode_answer

V2_INFER = {"v2_infer": v2_calls.infer, "v2_grpc_infer": v2_calls.grpc_infer}

log = logging.getLogger("aspire.servable")


def _metrics_shipper() -> Shipper:
    """This replica's recorder, shipped to the manager's store every second. Runtime latency
    is the time inside the replica: tensor conversion and the session run."""
    import ray

    from core.names import MANAGER_NAME, NAMESPACE

    manager: list[ray.actor.ActorHandle] = []

    def send(deltas):
        if not manager:
            manager.append(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
        try:
            ray.get(manager[0].apply_metrics.remote(deltas), timeout=10)
        except Exception:
            manager.clear()  # looked up again next time: the manager may have been restarted
            raise

    return Shipper(metrics.Recorder(), send)


def inference_threads(max_concurrency: int, batched: bool) -> int:
    """Threads of a replica's inference pool. A batched version needs one per request it may
    hold (a request waiting for its batch holds its thread). Otherwise the pool needs no more
    threads than the replica has cores: TF releases the GIL while it runs, and more threads only
    fight over the GIL for the JSON and proto work (64 threads answered half_plus_two at 0.87x
    the throughput of 1 or 2 on 2 cores; bench/README.md)."""
    if batched:
        return max(1, max_concurrency)
    return max(1, min(max_concurrency, max(2, len(os.sched_getaffinity(0)))))


@dataclass(frozen=True)
class VersionSpec:
    """What loads one version, wherever it runs: its own replica (ServableDeployment) or a shared
    host (deployments/replica/shared_host.py). Server-wide options come from ReplicaOptions."""

    name: str
    version: int
    path: str
    tags: tuple[str, ...] = ("serve",)
    warmup_iterations: int | None = 1  # None: --enable_model_warmup=false
    gpu_memory_limit_bytes: int | None = None
    batching: BatchingOptions | None = None
    threads: tuple[int, int] = (0, 0)
    run_timeout_ms: int = 0
    tensor_content: bool = False  # --enable_serialization_as_tensor_content
    # The serialized ConfigProto of --tensorflow_session_config_file / --platform_config_file,
    # the base of the session config (loader.py `session_config`); b"": none
    session_config: bytes = b""
    gpu_memory_fraction: float = 0.0  # --per_process_gpu_memory_fraction (0: not set)
    # --enable_signature_method_name_check: calls check their signature's method_name
    method_name_check: bool = False


class LoadedVersion:
    """One loaded version: its TF session (batched or not), warmup, metadata and the calls it
    answers (`work`), recording into the process's metrics recorder. Loading raises AspireError;
    the deployments keep that as state."""

    def __init__(self, spec: VersionSpec, recorder: metrics.Recorder):
        self.spec, self.name, self.version = spec, spec.name, spec.version
        self._recorder = recorder
        self._metadata_body: bytes | None = None
        self.measured_vram_bytes: int | None = None
        self.ongoing = 0  # calls taken for it, queued or running (a shared host counts them)
        loaded = SavedModelLoader(spec.path, spec.tags).load(
            intra_op_threads=spec.threads[0],
            inter_op_threads=spec.threads[1],
            gpu_memory_limit_bytes=spec.gpu_memory_limit_bytes,
            run_timeout_ms=spec.run_timeout_ms,
            base_config=spec.session_config,
            gpu_memory_fraction=spec.gpu_memory_fraction,
        )
        self.model: ServedModel | None = loaded  # None once unloaded
        try:
            self.session_threads = list(loaded.session_threads)
            params = spec.batching.parameters_for(spec.path) if spec.batching is not None else None
            self.batched = params is not None
            if params is not None:
                from deployments.replica.batching import BatchedModel

                labels = metrics.labels_for(metrics.ASPIRE_BATCH_TASKS, spec.name, spec.version)
                self.model = BatchedModel(
                    loaded,
                    params,
                    lambda tasks, _padding: recorder.observe(
                        metrics.ASPIRE_BATCH_TASKS, labels, tasks
                    ),
                )
            if spec.warmup_iterations is not None:
                self._warmup(spec.warmup_iterations)
            if spec.gpu_memory_limit_bytes:
                from core.nvml import process_vram_bytes

                self.measured_vram_bytes = process_vram_bytes(os.getpid())  # None without NVML
        except BaseException:
            self.unload()
            raise

    def _warmup(self, iterations: int) -> None:
        """run_warmup, recorded as TF Serving records it (latency and records read, by status)."""
        path = self.spec.path
        recorder, started, status, records = self._recorder, time.perf_counter(), "OK", 0
        try:
            records = run_warmup(
                self.model, path, self.name, self.version, iterations, self.spec.method_name_check
            )
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
            self._recorder.observe(
                metrics.TFS_RUNTIME_LATENCY,
                metrics.labels_for(metrics.TFS_RUNTIME_LATENCY, self.name, api, "TF1"),
                (time.perf_counter() - started) * 1e6,
            )

    def work(self, method: str, payload: bytes) -> bytes:
        """One call: method and request bytes in, the answer as wire/direct.py encode_answer."""
        started = time.perf_counter()
        try:
            if method == "metadata":
                return encode_answer("OK", self._metadata())
            model = self._loaded()
            if method in V2_INFER:
                answer = V2_INFER[method](model, payload, self.name, self.version)
                self._runtime("Predict", started)
                return encode_answer("OK", answer)
            if method == "v2_metadata":
                return encode_answer("OK", v2_calls.metadata(model, self.name, self.version))
            text: str | bytes
            if method in REST_METHODS:
                code, text = inference.handle_rest(
                    model, method, tfs_json.parse_body(payload), self.spec.method_name_check
                )
                api = method.capitalize()
            else:
                code, text = tfs_grpc_calls.handle(
                    model,
                    method,
                    payload,
                    self.name,
                    self.version,
                    self.spec.tensor_content,
                    self.spec.method_name_check,
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
                    "metadata": {"signature_def": inference.signature_metadata(self._loaded())},
                },
                indent=1,
            ).encode("utf-8")
        return self._metadata_body

    def _loaded(self) -> ServedModel:
        """The model, which a call needs; gone once unloaded."""
        model = self.model
        if model is None:  # unloaded while the call waited (a shared host's grace ran out)
            raise RuntimeError(f"{{name: {self.name} version: {self.version}}} is unloaded")
        return model

    def unload(self) -> None:
        model, self.model = self.model, None
        if model is not None:
            model.unload()


def load_failure(exc: BaseException) -> AspireError:
    """A failed load as the error kept for status: TF's own AspireError, or the exception."""
    if isinstance(exc, AspireError):
        return exc
    return AspireError(f"{type(exc).__name__}: {exc}", "UNKNOWN")


def close_replica(replica) -> None:
    """A replica going away (ServableDeployment, or deployments/replica/shared_host.py
    HostDeployment): its call service lets the calls in flight finish (routers stopped picking
    it), its metrics are shipped a last time, its inference pool stops. Attributes a failed
    constructor never set are skipped."""
    service = getattr(replica, "_service", None)
    if service is not None:
        service.stop(replica._shutdown_grace_s)
    shipper = getattr(replica, "_shipper", None)
    if shipper is not None:
        shipper.flush()
        shipper.stop()
    pool = getattr(replica, "_pool", None)
    if pool is not None:
        pool.shutdown(wait=False)


@serve.deployment
class ServableDeployment:
    def __init__(
        self,
        spec: VersionSpec,
        max_concurrency: int = 64,
        data_key: str = "",
        shutdown_grace_s: float = 20.0,
    ):
        self.name, self.version = spec.name, spec.version
        self._shutdown_grace_s = shutdown_grace_s
        self._service: ReplicaService | None = None
        self.loaded: LoadedVersion | None = None
        self.load_error: AspireError | None = None  # crosses Ray in ping(): it pickles
        self._ongoing = 0  # inference calls in this replica now (ping reports it)
        self._calls = {"direct": 0, "handle": 0}  # calls answered, by path (ping reports them)
        self._direct_ongoing = 0  # direct calls in flight: Serve's autoscaler cannot see them
        self._shipper = _metrics_shipper()
        started = time.monotonic()
        # A failed load (warmup included) is kept as state and reported by ping(), not raised:
        # raising would make Serve retry the constructor and bury TF's message in a traceback.
        try:
            self.loaded = LoadedVersion(spec, self._shipper.recorder)
        except Exception as exc:
            self.load_error = load_failure(exc)
        # TF's library code touched by its import and the load, most of which serving never runs
        # again, out of this process's resident set (core/code_pages.py); it faults back on use
        code_pages.drop_clean_code_pages()
        batched = self.loaded is not None and self.loaded.batched
        self._pool = ThreadPoolExecutor(
            inference_threads(max_concurrency, batched), thread_name_prefix="aspire-infer"
        )
        if data_key and self.load_error is None:  # the direct data path (call_service.py)
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
            spec.name,
            spec.version,
            spec.path,
            "OK" if self.load_error is None else f"{self.load_error.code}: {self.load_error}",
            time.monotonic() - started,
        )

    @property
    def model(self):
        """The loaded model (tests reach it), or None when the load failed."""
        return self.loaded.model if self.loaded is not None else None

    def ping(self) -> ReplicaPing:
        loaded = self.loaded
        return ReplicaPing.here(
            version=self.version,
            error=self.load_error,
            measured_vram_bytes=loaded.measured_vram_bytes if loaded else None,
            session_threads=tuple(loaded.session_threads) if loaded else None,
            ongoing_requests=self._ongoing,
            service_port=self._service.port if self._service is not None else None,
            calls=dict(self._calls),
        )

    def record_replica_metadata(self) -> dict:
        """Published by Serve to every router with this replica's place in the running list:
        the port of the replica's own service (deployments/replica/call_service.py)."""
        return {METADATA_KEY: self._service.port} if self._service is not None else {}

    # Inference runs on the replica's own pool of long-lived threads (inference_threads: one per
    # core, or one per request it may hold when batched, so requests waiting for a batch never
    # starve the batch), not on Serve's default path for sync methods, which measured slower.
    async def _answer(self, method: str, payload: bytes) -> bytes:
        """One call through Serve's handle: method and request bytes in, the answer encoded as
        wire/direct.py encode_answer out."""
        if self.load_error is not None:
            return encode_answer(self.load_error.code, self.load_error.message)
        loaded = self.loaded
        assert loaded is not None  # a replica without a load error has its version
        self._ongoing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, loaded.work, method, payload
            )
        finally:
            self._ongoing -= 1

    def _submit(self, method: str, payload: bytes, key: str = "") -> asyncio.Future:
        """A direct call (deployments/replica/call_service.py), on the service's loop: the future of
        its encoded answer. Cancelling it before the pool starts the work skips the work."""
        loop = asyncio.get_running_loop()  # the service's
        if self.load_error is not None:
            future = loop.create_future()
            future.set_result(encode_answer(self.load_error.code, self.load_error.message))
            return future
        loaded = self.loaded
        assert loaded is not None  # a replica without a load error has its version
        self._calls["direct"] += 1
        self._direct_ongoing += 1
        self._ongoing += 1
        future = loop.run_in_executor(self._pool, loaded.work, method, payload)
        future.add_done_callback(self._direct_done)
        return future

    def _direct_done(self, _future) -> None:
        self._direct_ongoing -= 1
        self._ongoing -= 1

    def record_autoscaling_stats(self) -> dict:
        """Serve's hook, read periodically: direct calls in flight, which Serve's own request
        counts miss; deployments/replica/autoscaling.py adds them to what handles report."""
        return {DIRECT_ONGOING: self._direct_ongoing}

    async def call(self, method: str, payload: bytes, key: str = "") -> bytes:
        """Serve's handle path (the routers' fallback): the same calls as the direct path.
        `key` names the version in a shared host; a dedicated replica holds one."""
        self._calls["handle"] += 1
        return await self._answer(method, payload)

    def __del__(self):
        close_replica(self)
        loaded = getattr(self, "loaded", None)
        if loaded is not None:
            loaded.unload()
