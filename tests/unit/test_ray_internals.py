"""core/ray_internals.py, the one door to Ray's private API, against the Ray installed."""

import inspect

from core import ray_internals


def test_the_installed_ray_is_the_one_the_door_was_written_for():
    installed = ray_internals.installed_ray_version()
    assert installed == ray_internals.RAY_VERSION, (
        f"Ray {installed} is installed, but core/ray_internals.py was written for Ray "
        f"{ray_internals.RAY_VERSION}: check each private use it lists against the new Ray "
        "(docs/upgrading-ray.md), then set RAY_VERSION"
    )


def test_the_private_modules_the_door_reads_exist():
    from ray._private import services, state, worker

    assert callable(state.actors)
    assert callable(services.canonicalize_bootstrap_address)
    assert hasattr(worker, "_global_node")


def test_a_handle_without_a_request_router_has_no_replicas_yet():
    class Handle:  # what a handle that has not routed a request yet looks like
        _router = None

    assert ray_internals.handle_replicas(Handle()) is None


def test_the_request_router_holds_running_replicas_as_the_door_reads_them():
    from ray.serve._private.request_router.request_router import RequestRouter
    from ray.serve._private.router import AsyncioRouter, SingletonThreadRouter
    from ray.serve.handle import DeploymentHandle

    assert isinstance(getattr(RequestRouter, "curr_replicas", None), property)
    for cls, attribute in (
        (DeploymentHandle, "_router"),
        (SingletonThreadRouter, "_asyncio_router"),
        (AsyncioRouter, "_request_router"),
    ):
        source = inspect.getsource(cls)
        assert f"self.{attribute}" in source, f"{cls.__name__} has no {attribute}"


def test_a_running_replica_carries_its_node_ip():
    from ray.serve._private.request_router.replica_wrapper import RunningReplica

    source = inspect.getsource(RunningReplica)
    assert "self._replica_info" in source
    from ray.serve._private.common import RunningReplicaInfo

    assert "node_ip" in RunningReplicaInfo.__dataclass_fields__


def test_gcs_address_resolves_an_explicit_address_without_connecting():
    # another host's address stays as it is (a loopback one becomes this node's IP)
    assert ray_internals.gcs_address("10.1.2.3:6379") == "10.1.2.3:6379"
