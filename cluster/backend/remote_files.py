"""The manager's lister of remote base paths (cluster/source.py RemoteLister): each listing runs
as a Ray task in a worker process, where TensorFlow's file systems may be imported
(deployments/replica/remote_files.py); the manager itself never imports TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import ray

from deployments.replica import remote_files

LIST_TIMEOUT_S = 120.0  # a fresh worker imports TensorFlow first (seconds)


@functools.cache
def _task() -> Any:  # a Ray remote function
    return ray.remote(num_cpus=0, max_retries=0)(remote_files.list_children)


def list_remote_children(base_path: str) -> list[str]:
    """The names of `base_path`'s children; OSError when it cannot be listed."""
    try:
        children, why = ray.get(_task().remote(base_path), timeout=LIST_TIMEOUT_S)
    except Exception as exc:  # a lost worker, a timeout: this round skips the model
        raise OSError(f"listing {base_path} failed: {exc}") from None
    if children is None:
        raise OSError(why)
    return children
