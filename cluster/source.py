"""File-system source: polls each model's base path and emits its full aspired-version list.

Every `poll_wait_s` seconds (0 = poll once; negative = never, for tests) each model's base path is
listed; numeric children are versions (policies/aspired.py) and the model's version policy picks
the aspired ones. The callback always receives the *full* list: a version left out is to be
unloaded, an empty list unloads every version of the model.

A base path that cannot be read is logged and that model is skipped for the round, so what it
serves keeps serving (TF Serving skips the whole round; skipping only the broken model keeps the
others moving).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from config.model_config import ModelSource
from policies.aspired import versions_in

log = logging.getLogger("aspire.source")


# Lists a remote base path (gs://, s3://, hdfs://): the names of its children. Remote file
# systems are TensorFlow's, and TensorFlow never enters the manager, so the manager is given one
# that lists in another process (cluster/backend/remote_files.py).
RemoteLister = Callable[[str], list[str]]


def _list_children(base_path: str, remote: RemoteLister | None) -> list[str]:
    if "://" in base_path:
        if remote is None:
            raise OSError("no file system for URL base paths in this process")
        return remote(base_path)
    return [entry.name for entry in os.scandir(base_path) if entry.is_dir()]


def poll_model(model: ModelSource, remote: RemoteLister | None = None) -> dict[int, str] | None:
    """{version: path} aspired for `model` now, or None when its base path cannot be read
    (`remote` lists URL base paths)."""
    try:
        children = _list_children(model.base_path, remote)
    except OSError as exc:
        log.error(
            "Could not find base path %s for servable %s with error %s",
            model.base_path,
            model.name,
            exc,
        )
        return None
    found, warnings = versions_in(children)
    for warning in warnings:
        log.warning(warning)
    if not found:
        log.warning(
            "No versions of servable %s found under base path %s. Did you forget to name "
            "your leaf directory as a number (eg. '/1/')?",
            model.name,
            model.base_path,
        )
    aspired = model.version_policy.select(list(found))
    for version in getattr(model.version_policy, "versions", ()):
        if version not in found:
            log.warning(
                "Version %d of servable %s, which was requested to be served as a "
                "'specific' version in the servable's version policy, was not found in "
                "the file system",
                version,
                model.name,
            )
    return {v: os.path.join(model.base_path, found[v]) for v in aspired}


class FileSystemSource:
    def __init__(
        self,
        models: list[ModelSource],
        poll_wait_s: float,
        callback: Callable[[str, dict[int, str]], None],
        remote: RemoteLister | None = None,
    ):
        self._models = list(models)
        self._remote = remote
        self._poll_wait_s = poll_wait_s
        self._callback = callback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # One emitter at a time: a poll that read the old list would otherwise aspire a removed
        # model's versions again after set_models emitted its empty list, and it stayed loaded.
        self._emitting = threading.Lock()

    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the served model list; models that left get an empty aspired list (after any
        poll in progress, so nothing aspires them again)."""
        with self._emitting:
            with self._lock:
                removed = {m.name for m in self._models} - {m.name for m in models}
                self._models = list(models)
            for name in removed:
                self._callback(name, {})

    def poll_once(self) -> None:
        with self._emitting:
            with self._lock:
                models = list(self._models)
            for model in models:
                aspired = poll_model(model, self._remote)
                if aspired is not None:
                    self._callback(model.name, aspired)

    def start(self) -> None:
        if self._poll_wait_s < 0:
            return
        self._thread = threading.Thread(target=self._run, name="aspire-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let one bad poll end polling
                log.exception("file-system poll failed")
            if self._poll_wait_s == 0 or self._stop.wait(self._poll_wait_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
