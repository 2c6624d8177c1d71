"""A node that leaves takes only the replicas that ran on it (cluster/repairs.py), without Ray: a
backend that runs one application per (node, GPU), as ServeBackend does, and a real book."""

import threading

import pytest

from cluster.manager import Manager
from cluster.manager_state import MemoryStore, VersionRecord, record_doc, record_fields
from cluster.repairs import repair_keys
from cluster.reservations import Reservations
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.units import GIB
from policies.admission import Gpu, Need
from policies.lifecycle import HarnessState


class NodeBackend:
    """Every replica needs `vram` of GPU memory; a version has `replicas` replicas. Each
    (node, GPU) of a version's placements is one application that reports its node, as
    ServeBackend's are; `extend` adds applications, `fail_extend` makes it raise."""

    def __init__(self, vram=4 * GIB, replicas=2):
        self.vram, self.replicas = vram, replicas
        self.deleted: list[str] = []
        self.extended: list[list[str]] = []
        self.fail_extend = False
        self.lock = threading.Lock()

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(self.vram, GIB), self.replicas

    def _apps(self, name, version, placements, first):
        groups: dict = {}
        for p in placements:
            groups[(p.node_id, p.gpu_index)] = groups.get((p.node_id, p.gpu_index), 0) + 1
        apps, where = [], []
        for i, ((node, gpu), count) in enumerate(groups.items(), start=first):
            app = f"{name}-{version}-p{i}"
            apps.append((app, count))
            where.append(AppPlacement(app, replicas=count, node_id=node, gpu=gpu))
        return Deployed(apps=tuple(apps), placements=tuple(where))

    def load(self, name, version, path, placements=None):
        return self._apps(name, version, placements, 0)

    def extend(self, name, version, path, placements, deployed):
        if self.fail_extend:
            raise AspireError("the replica did not start", "UNAVAILABLE")
        more = self._apps(name, version, placements, len(deployed.apps) + len(self.extended) + 1)
        with self.lock:
            self.extended.append(more.app_names())
        return more

    def unload(self, deployed):
        with self.lock:
            self.deleted.extend(deployed.app_names())


def inventory(*nodes, gpu=16 * GIB):
    return [Gpu(n, 0, gpu) for n in nodes], {n: 64 * GIB for n in nodes}, {n: 8.0 for n in nodes}


@pytest.fixture
def book():
    return Reservations(*inventory("n1", "n2", "n3"))


def start(backend, book, store=None):
    return Manager(
        backend,
        num_load_threads=2,
        max_num_load_retries=0,
        router_ack_timeout_s=0.2,
        book=book,
        store=store,
    )


def nodes_of(manager, name="m", version=1):
    deployed = manager._streams[name].versions[version].deployed
    return sorted(p.node_id for p in deployed.placements)


def held_nodes(book):
    return sorted(p.node_id for p in book.held().values())


def lose(manager, book, node, *keep):
    book.update_inventory(*inventory(*keep))
    return manager.nodes_lost({node})


def state(manager, name="m"):
    [s] = manager.model_status(name)
    return s["state"], s["error_code"]


def test_replicas_of_a_version_spread_across_nodes_though_best_fit_would_pack_them(book):
    manager = start(NodeBackend(), book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert nodes_of(manager) == ["n1", "n2"]  # one 16 GiB GPU could hold both 4 GiB replicas
    manager.shutdown()


def test_a_lost_node_leaves_the_version_available_from_its_other_replica_and_re_places_the_lost(
    book,
):
    backend = NodeBackend()
    manager = start(backend, book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    lost_app = next(
        p.app for p in manager._streams["m"].versions[1].deployed.placements if p.node_id == "n1"
    )
    assert lose(manager, book, "n1", "n2", "n3") == ["{name: m version: 1}"]
    # At once, before any clean-up: still AVAILABLE, routed to the survivor only.
    assert state(manager) == ("AVAILABLE", "OK")
    [(_, address)] = manager.serving_map().models["m"].items()
    assert [a for a, _ in address.apps] != [] and lost_app not in [a for a, _ in address.apps]
    assert manager.wait_idle(5)
    assert state(manager) == ("AVAILABLE", "OK")
    # The lost replica goes off the node the version still runs on (n2 had room too).
    assert nodes_of(manager) == ["n2", "n3"]
    assert held_nodes(book) == ["n2", "n3"]
    assert lost_app in backend.deleted
    assert len(backend.extended) == 1
    assert manager.missing_replicas() == {}
    apps = {a for a, _ in manager.serving_map().models["m"][1].apps}
    assert apps == {p.app for p in manager._streams["m"].versions[1].deployed.placements}
    manager.shutdown()


def test_lost_replicas_that_fit_nowhere_are_reported_and_re_placed_once_a_node_joins():
    book = Reservations(*inventory("n1", "n2"))
    backend = NodeBackend(vram=10 * GIB)
    manager = start(backend, book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    lose(manager, book, "n1", "n2")
    assert manager.wait_idle(5)
    assert state(manager) == ("AVAILABLE", "OK")  # serving from n2 alone
    [(count, reason)] = [
        (v["replicas"], v["reason"]) for v in manager.missing_replicas()["m"].values()
    ]
    assert count == 1
    assert "Insufficient resources to load servable {name: m version: 1}" in reason
    assert held_nodes(book) == ["n2"]
    book.update_inventory(*inventory("n2", "n3"))
    manager.capacity_changed("node n3 joined")
    assert manager.wait_idle(5)
    assert nodes_of(manager) == ["n2", "n3"]
    assert manager.missing_replicas() == {}
    manager.shutdown()


def test_replicas_that_fail_to_start_are_reported_and_their_room_released(book):
    backend = NodeBackend()
    manager = start(backend, book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    backend.fail_extend = True
    lose(manager, book, "n1", "n2", "n3")
    assert manager.wait_idle(5)
    assert state(manager) == ("AVAILABLE", "OK")
    [entry] = manager.missing_replicas()["m"].values()
    assert "starting them failed: the replica did not start" in entry["reason"]
    assert held_nodes(book) == ["n2"]  # the room the failed start reserved is free again
    manager.shutdown()


def test_a_version_with_no_replica_left_ends_unavailable_and_loads_again():
    book = Reservations(*inventory("n1", "n2"))
    backend = NodeBackend(replicas=1)
    manager = start(backend, book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    [node] = nodes_of(manager)
    other = "n2" if node == "n1" else "n1"
    lose(manager, book, node, other)
    assert "m" not in manager.serving_map().models
    assert manager.wait_idle(5)
    assert state(manager) == ("AVAILABLE", "OK")
    assert nodes_of(manager) == [other]
    manager.shutdown()


def test_an_unload_during_the_clean_up_leaves_nothing_held(book):
    backend = NodeBackend()
    manager = start(backend, book)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    lose(manager, book, "n1", "n2", "n3")
    manager.set_aspired_versions("m", {})
    assert manager.wait_idle(5)
    assert book.held() == {}
    assert manager.missing_replicas() == {}
    manager.shutdown()


def test_missing_replicas_are_stored_and_repaired_by_a_restarted_manager():
    store = MemoryStore()
    book = Reservations(*inventory("n1", "n2"))
    backend = NodeBackend(vram=10 * GIB)
    first = start(backend, book, store)
    first.set_aspired_versions("m", {1: "/m/1"})
    assert first.wait_idle(5)
    lose(first, book, "n1", "n2")
    assert first.wait_idle(5)
    assert first.flush_state() >= 0
    first.shutdown()
    apps = {p.app for p in first._streams["m"].versions[1].deployed.placements}
    book = Reservations(*inventory("n2", "n3"))  # a node joined while no manager ran
    second = start(backend, book, store)
    second.restore(lambda: apps, lambda name: f"{name}-")
    assert second.missing_replicas()["m"]["1"]["replicas"] == 1
    assert second.wait_idle(5)
    assert nodes_of(second) == ["n2", "n3"]
    assert second.missing_replicas() == {}
    second.shutdown()


def test_a_record_s_missing_replicas_round_trip_through_the_journal_form():
    record = VersionRecord(1, "/m/1", HarnessState.READY, missing_replicas=2, missing_reason="x")
    assert record_fields(record_doc(record))["missing_replicas"] == 2
    assert record_fields(record_doc(record))["missing_reason"] == "x"
    assert "missing" not in record_doc(VersionRecord(1, "/m/1"))


def test_repair_keys_reuse_the_keys_the_lost_replicas_had_and_never_a_held_one():
    s = "{name: m version: 1}"
    held = (f"{s} replica 2 of 3",)
    assert repair_keys(s, held, 2) == [f"{s} replica 1 of 3", f"{s} replica 3 of 3"]
    # the replica count changed since the load: fresh keys, none held
    held = (f"{s} replica 1 of 3", f"{s} replica 2 of 3", f"{s} replica 3 of 3")
    keys = repair_keys(s, held, 2)
    assert len(set(keys)) == 2 and not set(keys) & set(held)
