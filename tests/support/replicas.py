"""The replicas of a Serve application on the test's Ray cluster, as the integration tests that
kill, stop or count them read them (tests/integration/test_faults.py, test_shared_hosts.py)."""

from __future__ import annotations


def alive_replica_pids(app: str, deployment: str = "servable") -> set[int]:
    """PIDs of the ALIVE Serve replica actors of one application's deployment, from the GCS's
    actor table (Ray's state API needs the dashboard, which the tests' clusters run without)."""
    from core.ray_internals import actor_table

    return {
        a["Pid"]
        for a in actor_table()
        if a["ActorClassName"] == f"ServeReplica:{app}:{deployment}" and a["State"] == "ALIVE"
    }


def running_replicas(app: str) -> int:
    """Replicas Serve reports RUNNING across the application's deployments (0 if it is gone)."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())
