"""Listing a remote base path (gs://, s3://, hdfs://) with TensorFlow's file systems, in a process
that may import TensorFlow. The manager's source calls it as a Ray task
(cluster/backend/remote_files.py), so TensorFlow never enters the manager.
"""

from __future__ import annotations

from deployments.replica.tf_runtime import runtime


def list_children(base_path: str) -> tuple[list[str] | None, str]:
    """(the names of `base_path`'s children, "") or (None, why it cannot be listed)."""
    try:
        gfile = runtime(base_path).gfile
        if not gfile.exists(base_path):
            return None, f"{base_path} not found"
        return [c.rstrip("/") for c in gfile.listdir(base_path)], ""
    except Exception as exc:  # TF's errors do not pickle into the caller's classes
        return None, f"{type(exc).__name__}: {exc}"
