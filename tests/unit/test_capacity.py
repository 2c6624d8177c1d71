"""Capacity waits (cluster/capacity.py): what a refused version asks Ray's autoscaler for, how long
it waits and what it shows meanwhile, and that it is admitted once a node joins or ends with
RESOURCE_EXHAUSTED when none does. Without Ray: a real Manager and book, a backend that starts
nothing, and a recorder in place of ray.autoscaler.sdk.request_resources."""

import time

import pytest

from cluster import status
from cluster.capacity import (
    CapacityRequests,
    CapacityWaits,
    held_bundles,
    summary,
    wait_bundles,
)
from cluster.manager import Manager
from cluster.manager_state import MemoryStore, VersionRecord, record_doc, record_fields
from cluster.reservations import Reservations
from core.deployed import AppPlacement, Deployed
from core.units import GIB
from policies.admission import Need, Placement, Refusal
from policies.lifecycle import HarnessState

TIB = 1024 * GIB
REFUSED = Refusal("cpus", "Insufficient resources to load servable m")


# -- what is asked for ----------------------------------------------------------------------------


def test_a_refused_replica_asks_for_its_cpus_a_whole_gpu_and_memory_only_when_memory_was_short():
    assert wait_bundles(Need(0, GIB, cpus=1.0), 2, "cpus") == ({"CPU": 1.0}, {"CPU": 1.0})
    assert wait_bundles(Need(8 * GIB, GIB, cpus=0.25), 1, "gpu_memory") == (
        {"CPU": 0.25, "GPU": 1.0},
    )
    assert wait_bundles(Need(0, TIB, cpus=1.0), 1, "host_ram") == (
        {"CPU": 1.0, "memory": float(TIB)},
    )
    assert wait_bundles(Need(0, GIB), 1, "host_ram") == ({"memory": float(GIB)},)
    assert wait_bundles(Need(0, GIB), 1, "cpus") == ()  # nothing Ray could add a node for


def test_what_aspire_books_is_each_reservations_cpus_one_gpu_per_gpu_held_and_the_routers():
    held = [
        Placement("a", 0, 4 * GIB, GIB, 0.25),
        Placement("a", 0, 4 * GIB, GIB, 0.25),  # same GPU: one whole GPU in all
        Placement("b", None, 0, GIB, 1.0),
        Placement("b", None, 0, GIB),  # no CPUs booked
    ]
    assert held_bundles(held, {"a": 0.25, "b": 0.0}) == [
        {"CPU": 0.25},  # a's router
        {"CPU": 0.25},
        {"CPU": 0.25},
        {"CPU": 1.0},
        {"GPU": 1.0},
    ]
    assert summary([{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0, "memory": float(TIB)}]) == (
        "2 x {CPU: 1}, 1 x {CPU: 1, memory: 1024.0 GiB}"
    )


# -- how long a version waits ---------------------------------------------------------------------


def test_a_wait_begins_once_and_a_retry_keeps_the_first_deadline():
    now = [1000.0]
    waits = CapacityWaits(60, clock=lambda: now[0])
    assert not waits.wanted.is_set()
    first = waits.begin(None, Need(0, GIB, cpus=1.0), 1, REFUSED)
    assert first == (1000.0, 1060.0, ({"CPU": 1.0},))
    assert waits.wanted.is_set()  # the capacity loop asks at once
    now[0] = 1059.0
    assert waits.begin(first, Need(0, GIB, cpus=1.0), 1, REFUSED)[:2] == (1000.0, 1060.0)
    now[0] = 1060.0
    assert waits.begin(first, Need(0, GIB, cpus=1.0), 1, REFUSED) is None  # ran out


def test_no_wait_without_a_bound_for_a_shared_host_or_with_nothing_to_ask_for():
    need = Need(0, GIB, cpus=1.0)
    assert CapacityWaits(0).begin(None, need, 1, REFUSED) is None
    assert CapacityWaits(60).begin(None, need, 1, REFUSED, shared=True) is None
    assert CapacityWaits(60).begin(None, Need(0, GIB), 1, REFUSED) is None


# -- the request sent to the autoscaler -----------------------------------------------------------


def test_the_request_holds_what_is_booked_plus_what_waits_and_is_cleared_once_nothing_waits():
    sent, waiting = [], [[{"CPU": 1.0}]]
    requests = CapacityRequests(sent.append, lambda: [{"CPU": 0.25}], lambda: waiting[0])
    assert requests.sync() == [{"CPU": 0.25}, {"CPU": 1.0}]
    requests.sync()  # unchanged: not sent again
    assert sent == [[{"CPU": 0.25}, {"CPU": 1.0}]]
    waiting[0] = []
    assert requests.sync() == []
    requests.sync()
    assert sent == [[{"CPU": 0.25}, {"CPU": 1.0}], []]


def test_a_request_that_failed_is_sent_again_at_the_next_sync():
    calls = []

    def request(bundles):
        calls.append(bundles)
        if len(calls) == 1:
            raise ConnectionError("GCS away")

    requests = CapacityRequests(request, list, lambda: [{"CPU": 1.0}])
    with pytest.raises(ConnectionError):
        requests.sync()
    requests.sync()
    assert calls == [[{"CPU": 1.0}], [{"CPU": 1.0}]]


# -- a manager with a book: wait, then admitted or refused ----------------------------------------


class CpuBackend:
    """Each replica books `cpus` Ray CPUs and `ram` of host RAM; loads start nothing."""

    def __init__(self, ram=GIB, cpus=1.0):
        self.ram, self.cpus = ram, cpus
        self.loads = 0

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        ram = TIB if name == "huge" else self.ram
        return Need(0, ram, cpus=self.cpus), 1

    def load(self, name, version, path, placements=None):
        self.loads += 1
        [p] = placements
        app = f"{name}-{version}"
        return Deployed(apps=((app, 1),), placements=(AppPlacement(app, 1, node_id=p.node_id),))

    def unload(self, deployed):
        pass


def start(backend, book, wait_s):
    return Manager(
        backend,
        num_load_threads=2,
        max_num_load_retries=0,
        router_ack_timeout_s=0.2,
        book=book,
        store=MemoryStore(),
        capacity=CapacityWaits(wait_s),
    )


def head_only():  # the head: 0.75 Ray CPUs left for replicas once its router booked 0.25
    return Reservations([], {"head": 16 * GIB}, {"head": 0.75})


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_version_waits_as_loading_asks_for_a_node_and_loads_on_the_node_that_joins():
    book, backend = head_only(), CpuBackend()
    manager = start(backend, book, wait_s=600)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    [s] = manager.model_status("m")
    assert (s["state"], s["error_code"], s["error_message"]) == ("LOADING", "OK", "")
    [wait] = manager.capacity_waits()["m"].values()
    assert wait["bundles"] == [{"CPU": 1.0}] and "needs 1 Ray CPUs" in wait["reason"]
    assert wait["until"] - wait["since"] == 600
    assert manager.waiting_bundles() == [{"CPU": 1.0}]
    assert manager.wait_for_models(["m"], 0.05)["pending"] == ["m"]  # start-up keeps waiting
    gauges = manager.metrics_state()
    assert gauges["versions"] == [{"model": "m", "version": 1, "state": "LOADING"}]
    assert [(w["model"], w["version"]) for w in gauges["capacity_waits"]] == [("m", 1)]
    assert backend.loads == 0
    # a worker with 1 Ray CPU joins
    book.update_inventory([], {"head": 16 * GIB, "w1": 8 * GIB}, {"head": 0.75, "w1": 1.0})
    manager.capacity_changed("node w1 joined")
    assert manager.wait_idle(5)
    assert manager.model_status("m")[0]["state"] == "AVAILABLE"
    assert [p.node_id for p in book.held().values()] == ["w1"]
    assert manager.capacity_waits() == {} and manager.waiting_bundles() == []
    assert backend.loads == 1
    manager.shutdown()


def test_a_version_no_node_admits_ends_resource_exhausted_once_its_wait_ran_out():
    book = head_only()
    manager = start(CpuBackend(cpus=0.5), book, wait_s=0.5)
    manager.set_aspired_versions("huge", {1: "/huge/1"})  # 1 TiB of host RAM
    assert manager.wait_idle(5)
    assert manager.model_status("huge")[0]["state"] == "LOADING"
    assert manager.waiting_bundles() == [{"CPU": 0.5, "memory": float(TIB)}]
    wait_for(lambda: manager.model_status("huge")[0]["state"] == "END")
    [s] = manager.model_status("huge")
    assert s["error_code"] == "RESOURCE_EXHAUSTED"
    assert "host RAM" in s["error_message"]
    assert s["error_message"].endswith("no node with room joined in 0 s (--capacity_wait_s)")
    assert manager.waiting_bundles() == []
    # a node that joins later retries it, as any refused version; it no longer waits
    book.update_inventory([], {"head": 16 * GIB, "w1": 8 * GIB}, {"head": 0.75, "w1": 1.0})
    manager.capacity_changed("node w1 joined")
    assert manager.wait_idle(5)
    assert manager.model_status("huge")[0]["state"] == "END"
    assert manager.capacity_waits() == {}
    manager.shutdown()


def test_without_a_wait_bound_a_refusal_is_at_once_as_before():
    manager = start(CpuBackend(), head_only(), wait_s=0)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    [s] = manager.model_status("m")
    assert (s["state"], s["error_code"]) == ("END", "RESOURCE_EXHAUSTED")
    assert "Ray CPUs" in s["error_message"] and "--capacity_wait_s" not in s["error_message"]
    manager.shutdown()


def test_a_version_unaspired_while_it_waits_stops_waiting_and_asking():
    manager = start(CpuBackend(), head_only(), wait_s=600)
    manager.set_aspired_versions("m", {1: "/m/1"})
    assert manager.wait_idle(5)
    assert manager.waiting_bundles() == [{"CPU": 1.0}]
    manager.set_aspired_versions("m", {})
    assert manager.wait_idle(5)
    assert manager.waiting_bundles() == [] and manager.capacity_waits() == {}
    assert manager.model_status("m")[0]["state"] == "END"
    manager.shutdown()


def test_a_wait_is_stored_with_its_record_and_read_back():
    record = VersionRecord(3, "/m/3", state=HarnessState.ERROR, refused=True)
    record.capacity_wait = (100.0, 700.0, ({"CPU": 1.0},))
    doc = record_doc(record)
    assert doc["capacity_wait"] == [100.0, 700.0, [{"CPU": 1.0}]]
    assert VersionRecord(**record_fields(doc)).capacity_wait == record.capacity_wait
    assert "capacity_wait" not in record_doc(VersionRecord(3, "/m/3"))


def test_a_waiting_version_is_pending_for_start_up_and_an_expired_one_has_failed():
    stream = status.Stream("m")
    waiting = VersionRecord(1, "/m/1", state=HarnessState.ERROR, refused=True)
    waiting.capacity_wait = (time.time(), time.time() + 600, ({"CPU": 1.0},))
    stream.versions[1] = waiting
    assert status.models_pending({"m": stream}, ["m"]) == ["m"]
    waiting.capacity_wait = (time.time() - 10, time.time() - 1, ({"CPU": 1.0},))
    assert status.models_pending({"m": stream}, ["m"]) == []
    assert status.models_failed({"m": stream}, ["m"])["m"]["state"] == "END"


def test_the_status_table_shows_a_capacity_wait_and_each_nodes_ray_cpus():
    import re

    from cluster.cli import status_table

    described = {
        "models": {
            "m": [{"version": 1, "state": "LOADING", "error_code": "OK", "error_message": ""}]
        },
        "capacity_waits": {
            "m": {
                "1": {
                    "since": 0.0,
                    "until": 600.0,
                    "bundles": [{"CPU": 1.0}, {"CPU": 1.0}],
                    "reason": "Insufficient resources to load servable m",
                }
            }
        },
        "resources": {
            "hosts": [
                {
                    "node": "head",
                    "total": GIB,
                    "reserved": 0,
                    "free": GIB,
                    "holders": {},
                    "cpus": {"total": 1.75, "reserved": 1.0, "free": 0.75},
                }
            ]
        },
    }
    table = status_table(described)
    assert re.search(
        r"m\s+1\s+LOADING\s+waiting for capacity until \d\d:\d\d:\d\d, asked the autoscaler for "
        r"2 x \{CPU: 1\}: Insufficient resources to load servable m",
        table,
    ), table
    assert re.search(r"head\s+1.0 GiB\s+0 B\s+1.0 GiB\s+0.75/1.75", table), table
