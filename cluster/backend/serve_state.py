"""What Ray Serve runs now, as the manager reads it, and deleting applications.

`delete_apps` (serve_backend.py's unloads, the launcher's stop) deletes applications and waits
until they are gone; the rest answer the manager actor's status and restore: replicas RUNNING
per application, the live pids of servable replicas, the servable applications that exist.
Version replicas and shared hosts alike are Serve applications named with
core.names.APP_PREFIX whose deployment is "servable".
"""

from __future__ import annotations

import logging
import time

from ray import serve

from core.names import APP_PREFIX, app_name
from core.ray_internals import actor_table

log = logging.getLogger("aspire.servable")


def delete_apps(apps: list[str], timeout_s: float = 120.0) -> None:
    """Delete Serve applications and wait until they are gone (their replicas stopped), for at
    most `timeout_s` (0: ask, and do not wait).

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
        while timeout_s > 0 and set(apps) & set(serve.status().applications):
            if time.monotonic() > deadline:
                log.warning("applications %s not deleted after %.0f s", apps, timeout_s)
                return
            time.sleep(0.1)
    except Exception as exc:
        log.warning("deleting %s failed: %s", apps, exc)


# ---- what Serve runs now (the manager actor's status and restore read these) ----
def running_replicas() -> dict[str, int]:
    """Serve application -> replicas RUNNING now (an autoscaled version moves between its
    min_replicas and the count admission reserved)."""
    try:
        from ray import serve

        return {
            app: sum(
                count
                for d in status.deployments.values()
                for state, count in d.replica_states.items()
                if state == "RUNNING"  # ReplicaState is a str enum
            )
            for app, status in serve.status().applications.items()
        }
    except Exception as exc:  # status must answer even when Serve does not
        log.warning("serve.status() failed: %s", exc)
        return {}


def live_replica_pids() -> dict[str, list[int]]:
    """Serve application -> pids of its servable replicas alive now, from the GCS's actor table
    (the state API needs the dashboard, which an embedded Ray runs without). A placement's `pid`
    is the replica that answered at load; this follows Serve's replacements."""
    try:
        prefix, suffix = "ServeReplica:", ":servable"
        pids: dict[str, list[int]] = {}
        for actor in actor_table():
            name = actor.get("ActorClassName", "")
            if actor.get("State") == "ALIVE" and name.startswith(prefix) and name.endswith(suffix):
                pids.setdefault(name[len(prefix) : -len(suffix)], []).append(actor["Pid"])
        return {app: sorted(found) for app, found in pids.items()}
    except Exception as exc:  # status must answer even when the GCS does not
        log.warning("reading the actor table failed: %s", exc)
        return {}


def servable_apps(timeout_s: float = 60.0) -> set[str]:
    """The Serve applications of servable versions that exist now. Retried while Serve's
    controller does not answer: a restarted manager must not take "unknown" for "none"."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return {app for app in serve.status().applications if app.startswith(APP_PREFIX)}
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("serve.status() failed: %s; trying again", exc)
            time.sleep(1.0)


def app_prefix(name: str) -> str:
    """How the Serve application names of model `name` start: app_name() ends with the
    version number (and a version's further placements add "-p<i>")."""
    return app_name(name, 0)[:-1]
