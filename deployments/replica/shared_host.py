"""A shared host: one Ray Serve replica that holds many loaded versions ("placement": "shared").

Each version in a host is a `LoadedVersion` (deployments/replica/servable.py) with its own TF
session, batching, warmup, metadata and metric labels, exactly as in a dedicated replica; the host
adds one process, one inference pool, one call service and one metrics shipper for all of them.

Contract:
- What a host holds is its *manifest*, kept by the manager (cluster/backend/host_registry.py):
  servable key -> VersionSpec. A host replica reads it in its constructor and loads every
  version in it before it returns, so Serve routes nothing to a replica that is still loading
  (a restart, a scale-up, a replacement after a SIGKILL all start this way). Then a thread
  long-polls the manifest and follows it: new keys are loaded, removed keys unloaded, one at a
  time, while the other versions keep answering.
- After each load or unload the replica reports it (`host_report`): the manager calls a version
  AVAILABLE only once every live replica of the host has loaded it, and a failed load ends that
  version only (END with TF's error); the host and its other versions are untouched.
- Calls name their version by the servable key (replica_service.servable_key, a keyed call on the
  direct path, the `key` argument on Serve's handle path). A key the replica does not hold is
  answered NOT_FOUND with TF Serving's words.
- GPU memory: TensorFlow has one GPU allocator per process, so every version in a GPU host shares
  one, capped to the host's block (--shared_host_vram, less the CUDA context) by each version's
  session config (loader.py `session_config`). --per_process_gpu_memory_fraction does not change
  a host's block or cap: the block is what admission booked for the process, and the host's
  versions each take their own estimate inside it (cluster/host_admission.py).
- Unloading a version waits (up to the shutdown grace) for every call taken for it, queued in
  the pool or running, then closes its session and gives freed heap back to the system
  (core/code_pages.py `trim_heap`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from core.contracts import ReplicaPing
from core.errors import AspireError
from deployments.replica import code_pages
from deployments.replica.autoscaling import DIRECT_ONGOING
from deployments.replica.call_service import ReplicaService
from deployments.replica.servable import (
    LoadedVersion,
    VersionSpec,
    _metrics_shipper,
    close_replica,
    inference_threads,
    load_failure,
)
from deployments.wire.direct import METADATA_KEY, encode_answer

log = logging.getLogger("aspire.host")


def _manager():
    import ray

    from core.names import MANAGER_NAME, NAMESPACE

    return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)


def _not_held(key: str) -> bytes:
    version, _, name = key.partition(":")
    return encode_answer(
        "NOT_FOUND", f"Servable not found for request: Specific({name}, {version})"
    )


@serve.deployment
class HostDeployment:
    def __init__(
        self,
        app: str,
        max_concurrency: int = 64,
        batched: bool = False,
        data_key: str = "",
        shutdown_grace_s: float = 20.0,
        poll_s: float = 5.0,
    ):
        self.app = app
        self.replica_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._shutdown_grace_s, self._poll_s = shutdown_grace_s, poll_s
        self._versions: dict[str, LoadedVersion] = {}
        self._errors: dict[str, AspireError] = {}
        self._ongoing = 0
        self._direct_ongoing = 0
        self._calls = {"direct": 0, "handle": 0}
        self._stop = threading.Event()
        # guards taking a version for a call against unloading it: a call counts on its version
        # from the moment it is taken, queued in the pool or running, so an unload waits for it
        self._guard = threading.Lock()
        self._shipper = _metrics_shipper()
        self._manager = _manager()
        self._epoch = -1
        self._pool = ThreadPoolExecutor(
            inference_threads(max_concurrency, batched), thread_name_prefix="aspire-infer"
        )
        self._service: ReplicaService | None = None
        started = time.monotonic()
        self._follow_once(timeout_s=0.0)  # everything the host holds, before Serve routes here
        if data_key:
            import ray

            self._service = ReplicaService(self._submit, data_key, ray.util.get_node_ip_address())
            self._service.start()
        log.info(
            "host %s replica %s: %d versions loaded, %d failed in %.2f s",
            app,
            self.replica_id,
            len(self._versions),
            len(self._errors),
            time.monotonic() - started,
        )
        threading.Thread(target=self._follow, name="aspire-host-manifest", daemon=True).start()

    # ---- the manifest -----------------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once(self._poll_s)
            except Exception as exc:  # the manager restarting: keep what is loaded, ask again
                log.warning("host manifest poll failed: %s", exc)
                self._stop.wait(1.0)
                try:
                    self._manager = _manager()
                except Exception:  # noqa: BLE001 - not back yet
                    pass

    def _follow_once(self, timeout_s: float) -> None:
        import ray

        answer = ray.get(
            self._manager.host_manifest.remote(self.app, self.replica_id, self._epoch, timeout_s),
            timeout=timeout_s + 60,
        )
        if answer is None:  # no change (or the manager does not know the host yet)
            return
        epoch, manifest = answer
        self._apply(manifest)
        self._epoch = epoch

    def _apply(self, manifest: dict[str, VersionSpec]) -> None:
        for key in [k for k in self._errors if k not in manifest]:
            del self._errors[key]
        gone = [k for k in self._versions if k not in manifest]
        for key in gone:
            self._unload(key)
        if gone:
            code_pages.trim_heap()
        loaded = False
        for key, spec in manifest.items():
            if self._stop.is_set():
                return
            if key in self._versions or key in self._errors:
                continue
            started = time.monotonic()
            try:
                self._versions[key] = LoadedVersion(spec, self._shipper.recorder)
                error = None
                loaded = True
            except Exception as exc:
                error = self._errors[key] = load_failure(exc)
            log.info(
                "load of {name: %s version: %d} into host %s: %s in %.2f s",
                spec.name,
                spec.version,
                self.app,
                "OK" if error is None else f"{error.code}: {error.message}",
                time.monotonic() - started,
            )
            self._report(key, error)
        if loaded:  # TF's code pages touched by the load (core/code_pages.py)
            code_pages.drop_clean_code_pages()

    def _take(self, key: str) -> LoadedVersion | None:
        with self._guard:
            version = self._versions.get(key)
            if version is not None:
                version.ongoing += 1
            return version

    def _give_back(self, version: LoadedVersion) -> None:
        with self._guard:
            version.ongoing -= 1

    def _unload(self, key: str) -> None:
        with self._guard:  # new calls for it answer NOT_FOUND from now on
            version = self._versions.pop(key)
        deadline = time.monotonic() + self._shutdown_grace_s
        while version.ongoing and time.monotonic() < deadline:
            time.sleep(0.01)
        version.unload()
        log.info("unloaded {name: %s version: %d} from host %s", *key.split(":")[::-1], self.app)
        self._report(key, None, gone=True)

    def _report(self, key: str, error: AspireError | None, gone: bool = False) -> None:
        try:
            self._manager.host_report.remote(self.app, self.replica_id, key, error, gone)
        except Exception as exc:  # noqa: BLE001 - the next manifest poll re-registers
            log.warning("host report failed: %s", exc)

    # ---- calls ------------------------------------------------------------------------------
    def _submit(self, method: str, payload: bytes, key: str = "") -> asyncio.Future:
        """A direct call (deployments/replica/call_service.py), on the service's loop."""
        loop = asyncio.get_running_loop()  # the service's
        version = self._take(key)
        if version is None:
            future = loop.create_future()
            future.set_result(_not_held(key))
            return future
        self._calls["direct"] += 1
        self._direct_ongoing += 1
        self._ongoing += 1
        future = loop.run_in_executor(self._pool, version.work, method, payload)
        future.add_done_callback(lambda _f: self._direct_done(version))
        return future

    def _direct_done(self, version: LoadedVersion) -> None:
        self._give_back(version)
        self._direct_ongoing -= 1
        self._ongoing -= 1

    async def call(self, method: str, payload: bytes, key: str = "") -> bytes:
        """Serve's handle path (the routers' fallback): the same calls as the direct path."""
        self._calls["handle"] += 1
        version = self._take(key)
        if version is None:
            return _not_held(key)
        self._ongoing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, version.work, method, payload
            )
        finally:
            self._give_back(version)
            self._ongoing -= 1

    def ping(self) -> ReplicaPing:
        return ReplicaPing.here(
            host=self.app,
            replica_id=self.replica_id,
            loaded=tuple(sorted(self._versions)),
            errors={k: f"{e.code}: {e.message}" for k, e in self._errors.items()},
            ongoing_requests=self._ongoing,
            service_port=self._service.port if self._service is not None else None,
            calls=dict(self._calls),
        )

    def record_replica_metadata(self) -> dict:
        return {METADATA_KEY: self._service.port} if self._service is not None else {}

    def record_autoscaling_stats(self) -> dict:
        return {DIRECT_ONGOING: self._direct_ongoing}

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._report("", None, gone=True)  # this replica leaves: loads stop waiting for it
        close_replica(self)
        for version in list(getattr(self, "_versions", {}).values()):
            version.unload()
