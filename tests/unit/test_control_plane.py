"""The control plane built without Ray (cluster/control_plane.py): an in-memory backend, state
store and cluster stand in for Ray Serve, the GCS and Ray's node table."""

import threading
import time

import pytest

from cluster.control_plane import ClusterView, ManagerConfig, build_control_plane
from cluster.manager_state import MemoryStore, loads
from config.aspire_config import ModelSettings
from config.model_config import ModelSource
from core.contracts import VersionAddress
from core.deployed import AppPlacement, Deployed
from core.units import GIB
from policies.admission import Gpu, Need

PREFIX = "manager/test/"


class MemoryBackend:
    """Versions "run" as soon as they are loaded: one application per version, on the node of
    its first placement."""

    def __init__(self):
        self.settings: dict[str, ModelSettings] = {}
        self.apps: set[str] = set()
        self.loads: list[tuple[str, int]] = []
        self.cancelled = False
        self.lock = threading.Lock()

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(2 * GIB if has_gpus else 0, GIB), 1

    def load(self, name, version, path, placements):
        app = f"app-{name}-v{version}"
        node = placements[0].node_id if placements else None
        with self.lock:
            self.loads.append((name, version))
            self.apps.add(app)
        return Deployed(
            apps=((app, 1),),
            ram_bytes=GIB,
            placements=(AppPlacement(app, node_id=node, pid=4242, gpu=0, vram_bytes=2 * GIB),),
            max_queued_requests=7,
        )

    def unload(self, deployed):
        with self.lock:
            self.apps.difference_update(deployed.app_names())

    def cancel_loads(self):
        self.cancelled = True


def cluster_of(backend, gpus=1):
    return ClusterView(
        inventory=lambda declared: (
            [Gpu("n1", i, 16 * GIB) for i in range(gpus)],
            {"n1": 64 * GIB},
            {"n1": 8.0},
        ),
        servable_apps=lambda: set(backend.apps),
        app_prefix=lambda name: f"app-{name}-v",
        running_replicas=lambda: {app: 1 for app in backend.apps},
        replica_pids=lambda: {app: [4242] for app in backend.apps},
    )


@pytest.fixture
def models(tmp_path):
    for version in ("1", "2"):
        (tmp_path / "m" / version).mkdir(parents=True)
    return [ModelSource("m", str(tmp_path / "m"))]


def build(backend, store, models, restarted=False, **config):
    return build_control_plane(
        ManagerConfig(models, num_load_threads=1, max_num_load_retries=0, **config),
        backend,
        store,
        cluster_of(backend),
        restarted=restarted,
        state_prefix=PREFIX,
    )


def test_one_poll_and_one_reconcile_load_the_latest_version_and_publish_it(models):
    backend, store = MemoryBackend(), MemoryStore()
    plane = build(backend, store, models, labels={})
    try:
        plane.source.poll_once()  # the source hands the manager m's aspired versions
        assert plane.manager.reconcile() == 1  # one load started
        assert plane.manager.wait_idle(5)
        assert backend.loads == [("m", 2)]
        assert plane.model_status("m") == (
            "OK",
            [
                {
                    "version": 2,
                    "state": "AVAILABLE",
                    "error_code": "OK",
                    "error_message": "",
                    "aspired": True,
                }
            ],
        )
        assert plane.serving_map().models == {"m": {2: VersionAddress((("app-m-v2", 1),), 7)}}
        status = plane.describe()
        [placement] = status["placements"]["m"]["2"]
        assert placement["app"] == "app-m-v2" and placement["node_id"] == "n1"
        assert (placement["running_replicas"], placement["pids"]) == (1, [4242])
        assert status["resources"]["gpus"][0]["reserved"] == 2 * GIB
        page = plane.metrics_page()
        assert 'aspire_servable_state{model="m",version="2",state="AVAILABLE"} 1' in page
        stored = loads(store.get(f"{PREFIX}model/m"))
        assert [v["state"] for v in stored["versions"]] == ["ready"]
    finally:
        plane.shutdown(5)
        plane.manager.shutdown()


def test_a_restarted_control_plane_adopts_what_runs_and_keeps_the_configuration_in_force(models):
    backend, store = MemoryBackend(), MemoryStore()
    first = build(backend, store, models)
    first.source.poll_once()
    assert first.manager.wait_idle(5)
    first.set_settings({"m": ModelSettings(version_policy="resource_preserving")})
    first.manager.flush_state()
    # the process dies: nothing is shut down, the applications keep running
    second = build(backend, store, [], restarted=True)
    try:
        assert second.restored == {"models": 1, "adopted": 1, "dropped": 0, "orphans": 0}
        assert second.configured_models() == ["m"]  # the stored model list, not the config's
        assert backend.settings["m"].version_policy == "resource_preserving"
        assert backend.loads == [("m", 2)]  # adopted, not loaded again
        assert second.serving_map().models["m"][2].apps == (("app-m-v2", 1),)
        assert sorted(second.book.held()) == ["{name: m version: 2}"]
    finally:  # the load threads only: unloading would wait out the restart's router grace
        second.manager.shutdown()
        first.manager.shutdown()


def test_a_new_control_plane_clears_what_a_predecessor_stored(models):
    backend, store = MemoryBackend(), MemoryStore()
    store.put(f"{PREFIX}model/old", b"{}")
    plane = build(backend, store, models)
    try:
        assert store.get(f"{PREFIX}model/old") is None
        assert plane.restored is None
    finally:
        plane.shutdown(5)
        plane.manager.shutdown()


def test_started_loops_load_what_the_source_finds_and_shutdown_unloads_it(models, tmp_path):
    side = tmp_path / "aspire.json"
    side.write_text("{}")
    backend, store = MemoryBackend(), MemoryStore()
    plane = build(backend, store, models, poll_wait_s=0.05, aspire_config_file=str(side))
    assert [name for name, _, _ in plane.loops()] == [
        "aspire-reconcile",
        "aspire-state",
        "aspire-inventory",
        "aspire-rollouts",
        "aspire-side",
    ]
    plane.start()
    try:
        found = plane.manager.wait_for_models(["m"], 5)
        assert found == {"pending": [], "failed": {}}
    finally:
        assert plane.shutdown(5)
        plane.manager.shutdown()
    assert backend.cancelled and backend.apps == set()


def test_nodes_that_join_or_leave_get_or_lose_their_routers_and_status_lists_them(models):
    backend, store = MemoryBackend(), MemoryStore()
    nodes = {"n1": 64 * GIB}
    synced: list[set[str]] = []

    def sync_routers(alive):
        synced.append(set(alive))
        return {n: {"app": f"aspire-router-{n}", "address": f"10.0.0.{n[1]}"} for n in alive}

    cluster = ClusterView(
        inventory=lambda declared: ([], dict(nodes), {n: 8.0 for n in nodes}),
        servable_apps=lambda: set(backend.apps),
        app_prefix=lambda name: f"app-{name}-v",
        running_replicas=lambda: {f"aspire-router-{n}": 1 for n in nodes},
        sync_routers=sync_routers,
    )
    plane = build_control_plane(
        ManagerConfig(models, num_load_threads=1, max_num_load_retries=0),
        backend,
        store,
        cluster,
        restarted=False,
        state_prefix=PREFIX,
    )
    try:
        assert plane.sync_routers() == {"n1": {"app": "aspire-router-n1", "address": "10.0.0.1"}}
        plane.refresh_inventory()  # nothing changed: Serve is not asked
        assert synced == [{"n1"}]
        nodes["n2"] = 64 * GIB
        plane.refresh_inventory()
        assert synced[-1] == {"n1", "n2"}
        assert plane.describe()["routers"] == [
            {
                "node": n,
                "address": f"10.0.0.{n[1]}",
                "app": f"aspire-router-{n}",
                "running_replicas": 1,
            }
            for n in ("n1", "n2")
        ]
        del nodes["n1"]
        plane.refresh_inventory()
        assert synced[-1] == {"n2"}
        assert [r["node"] for r in plane.describe()["routers"]] == ["n2"]
        nodes["n2"] = 32 * GIB  # the same nodes with other numbers: the routers stay as they are
        plane.refresh_inventory()
        assert len(synced) == 3
    finally:
        plane.shutdown(5)
        plane.manager.shutdown()


def test_a_version_that_fits_nowhere_asks_the_autoscaler_and_loads_on_the_gpu_that_joins(models):
    class BigBackend(MemoryBackend):
        def need(self, name, version, path, has_gpus, measured_vram_bytes):
            return Need(32 * GIB, GIB, cpus=0.5), 1

    backend, sent = BigBackend(), []
    gpus = [[Gpu("n1", 0, 16 * GIB)]]
    cluster = ClusterView(
        inventory=lambda declared: (
            list(gpus[0]),
            {g.node_id: 64 * GIB for g in gpus[0]},
            {g.node_id: 4.0 for g in gpus[0]},
        ),
        servable_apps=lambda: set(backend.apps),
        app_prefix=lambda name: f"app-{name}-v",
        aspire_cpus=lambda: {"n1": 0.25},
        request_resources=sent.append,
    )
    plane = build_control_plane(
        ManagerConfig(models, poll_wait_s=0.05, inventory_refresh_s=0.05, capacity_wait_s=600),
        backend,
        MemoryStore(),
        cluster,
        restarted=False,
        state_prefix=PREFIX,
    )
    plane.start()
    try:
        wait_until = time.monotonic() + 10
        # the first sync clears what an earlier manager may have asked for, the wait asks
        while not sent or sent[-1] != [{"CPU": 0.25}, {"CPU": 0.5, "GPU": 1.0}]:
            assert time.monotonic() < wait_until, sent
            time.sleep(0.01)
        assert plane.model_status("m")[1][0]["state"] == "LOADING"
        assert plane.describe()["capacity_waits"]["m"]["2"]["bundles"] == [{"CPU": 0.5, "GPU": 1.0}]
        assert 'aspire_capacity_wait_seconds{model="m",version="2"}' in plane.metrics_page()
        gpus[0] = [Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 40 * GIB)]  # a 40 GiB GPU node joins
        assert plane.manager.wait_for_models(["m"], 10) == {"pending": [], "failed": {}}
        assert plane.model_status("m")[1][0]["state"] == "AVAILABLE"
        while sent[-1] != []:  # nothing waits: the request is cleared
            assert time.monotonic() < wait_until + 10, sent
            time.sleep(0.01)
    finally:
        assert plane.shutdown(5)
        plane.manager.shutdown()
