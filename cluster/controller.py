"""The manager as a named, detached Ray actor: the control plane of one Aspire deployment.

It owns the file-system source (a polling thread), the Manager (policies and state) and its
reconcile loop (a thread), and creates/deletes version deployments through ServeBackend. It is a
threaded actor: routers hold long polls on `wait_for_serving_map` while status calls and the CLI
are answered concurrently.
"""
from __future__ import annotations

import logging
import threading

import ray

from cluster.manager import Manager
from cluster.source import FileSystemSource, ModelSource
from deployments.errors import AspireError
from deployments.router import MANAGER_NAME, NAMESPACE
from deployments.servable import ReplicaOptions, ServeBackend

RECONCILE_INTERVAL_S = 0.1


def configure_logging() -> None:
    """INFO logs of the `aspire.*` loggers to stderr, whatever Ray did to the root logger."""
    logger = logging.getLogger("aspire")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


class ManagerActor:
    def __init__(self, models: list[ModelSource], poll_wait_s: float, replica_options: ReplicaOptions,
                 num_load_threads: int = 4):
        configure_logging()
        self._manager = Manager(ServeBackend(replica_options), num_load_threads=num_load_threads)
        self._models = {m.name: m for m in models}
        self._source = FileSystemSource(models, poll_wait_s, self._manager.set_aspired_versions)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._reconcile_loop, name="aspire-reconcile", daemon=True)
        self._loop.start()
        self._source.start()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_INTERVAL_S):
            try:
                self._manager.reconcile()
            except Exception:
                logging.getLogger("aspire.manager").exception("reconcile failed")

    def ready(self) -> bool:
        return True

    def configured_models(self) -> list[str]:
        return sorted(self._models)

    def model_status(self, name: str, version: int | None = None) -> tuple[str, object]:
        try:
            return "OK", self._manager.model_status(name, version)
        except AspireError as err:
            return err.code, err.message

    def list_models(self) -> dict:
        return self._manager.list_models()

    def serving_map(self) -> dict:
        return self._manager.serving_map()

    def wait_for_serving_map(self, known_epoch: int, router_id: str, timeout_s: float):
        return self._manager.wait_for_serving_map(known_epoch, router_id, timeout_s)

    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the served model list (models that left are unloaded) and poll at once."""
        self._models = {m.name: m for m in models}
        self._source.set_models(models)
        self._source.poll_once()

    def settle(self, timeout_s: float) -> bool:
        """Wait until every stream has carried out every action its policy asks for."""
        return self._manager.wait_idle(timeout_s)

    def poll_now(self) -> None:
        self._source.poll_once()

    def shutdown(self, timeout_s: float = 120.0) -> bool:
        """Unload every version (deleting its deployment) and stop the loops."""
        self._source.stop()
        for name in self._manager.stream_names():
            self._manager.forget_stream(name)
        done = self._manager.wait_idle(timeout_s)
        self._stop.set()
        return done


def start_manager(models: list[ModelSource], poll_wait_s: float, replica_options: ReplicaOptions,
                  num_load_threads: int = 4):
    """Create the detached manager actor (replacing a stale one) and wait until it answers."""
    try:
        stale = ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
    except ValueError:
        stale = None
    if stale is not None:
        logging.getLogger("aspire").warning("replacing an existing Aspire manager on this cluster")
        ray.kill(stale, no_restart=True)
    actor_cls = ray.remote(ManagerActor)
    actor = actor_cls.options(name=MANAGER_NAME, namespace=NAMESPACE, lifetime="detached",
                              max_concurrency=64, num_cpus=0).remote(
        models, poll_wait_s, replica_options, num_load_threads)
    ray.get(actor.ready.remote())
    return actor


def get_manager():
    return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
