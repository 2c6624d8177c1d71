"""Shared hosts without Ray: admission inside hosts (cluster/host_admission.py), the manifest
registry the host replicas follow (cluster/backend/host_registry.py), and the manager driving both
through a recording backend."""

from __future__ import annotations

import math
import threading

import pytest

from cluster.backend.host_registry import STALE_S, HostRegistry
from cluster.host_admission import HOST_PREFIX, HostBook
from cluster.manager import Manager
from cluster.reservations import Reservations
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.units import GIB, MIB
from policies.admission import CUDA_CONTEXT_BYTES, Gpu, HostSlot, Need, Refusal
from tests.support.fake_time import FakeTime

BLOCK = {"cpu": Need(0, 1 * GIB), "gpu": Need(4 * GIB, 1 * GIB)}


def book_of(ram_gib: int = 8, gpus: int = 0) -> Reservations:
    return Reservations([Gpu("n1", i, 16 * GIB) for i in range(gpus)], {"n1": ram_gib * GIB})


def test_versions_pack_into_one_host_until_its_block_is_full_then_a_second_opens():
    book = book_of()
    hosts = HostBook(book, BLOCK.__getitem__)
    slots = [hosts.admit(f"m{i}", Need(0, 300 * MIB), "cpu") for i in range(4)]
    assert [s.app for s in slots] == [f"{HOST_PREFIX}1"] * 3 + [f"{HOST_PREFIX}2"]
    assert sorted(book.held()) == [f"{HOST_PREFIX}1#0", f"{HOST_PREFIX}2#0"]
    assert all(p.ram_bytes == GIB for p in book.held().values())  # each host books its block
    assert [h["used_ram_bytes"] for h in hosts.snapshot()] == [900 * MIB, 300 * MIB]


def test_a_version_goes_to_the_fullest_host_that_still_fits_it():
    hosts = HostBook(book_of(), BLOCK.__getitem__)
    hosts.admit("big", Need(0, 700 * MIB), "cpu")  # host 1: 324 MiB left
    hosts.admit("big2", Need(0, 700 * MIB), "cpu")  # host 2
    hosts.release("big2")  # host 2 closed
    hosts.admit("mid", Need(0, 500 * MIB), "cpu")  # does not fit host 1: host 3
    small = hosts.admit("small", Need(0, 300 * MIB), "cpu")
    assert isinstance(small, HostSlot) and small.app == f"{HOST_PREFIX}1"  # 324 < 524 left


def test_a_version_larger_than_a_block_is_refused_and_nothing_is_booked():
    book = book_of()
    hosts = HostBook(book, BLOCK.__getitem__)
    refused = hosts.admit("{name: huge version: 1}", Need(0, 2 * GIB), "cpu")
    assert isinstance(refused, Refusal) and refused.code == "RESOURCE_EXHAUSTED"
    assert refused.message == (
        "Insufficient resources to load servable {name: huge version: 1}; needs 2.0 GiB of "
        "host RAM, a shared host holds 1.0 GiB (--shared_host_ram / --shared_host_vram); "
        'give the model "placement": "dedicated" or a larger host block'
    )
    assert book.held() == {} and hosts.snapshot() == []


def test_when_no_new_block_fits_the_version_is_refused_and_the_open_hosts_are_untouched():
    book = book_of(ram_gib=1)
    hosts = HostBook(book, BLOCK.__getitem__)
    assert isinstance(hosts.admit("a", Need(0, 800 * MIB), "cpu"), HostSlot)
    refused = hosts.admit("b", Need(0, 800 * MIB), "cpu")
    assert isinstance(refused, Refusal) and refused.reason == "host_ram"
    assert refused.message.startswith(
        "Insufficient resources to load servable b (a new shared host's block); needs 1.0 GiB"
    )
    assert [h["versions"] for h in hosts.snapshot()] == [["a"]]
    assert list(book.held()) == [f"{HOST_PREFIX}1#0"]


def test_the_last_version_out_closes_its_host_and_frees_the_block():
    book = book_of()
    hosts = HostBook(book, BLOCK.__getitem__)
    hosts.admit("a", Need(0, 100 * MIB), "cpu")
    hosts.admit("b", Need(0, 100 * MIB), "cpu")
    assert hosts.release("a") is None
    assert hosts.release("b") == f"{HOST_PREFIX}1"
    assert book.held() == {} and hosts.snapshot() == []
    assert hosts.release("b") is None  # twice: nothing


def test_a_gpu_host_books_its_block_on_one_gpu_and_holds_the_cuda_context_once():
    book = book_of(gpus=1)
    hosts = HostBook(book, BLOCK.__getitem__)
    per_version = CUDA_CONTEXT_BYTES + 1 * GIB  # a dedicated replica's need: context included
    slots = [hosts.admit(f"g{i}", Need(per_version, 10 * MIB), "gpu") for i in range(5)]
    assert {s.app for s in slots[:4]} == {f"{HOST_PREFIX}1"}  # 4 x 1 GiB in a 4 GiB block
    assert slots[4].app == f"{HOST_PREFIX}2"
    placement = slots[0].placement
    assert (placement.gpu_index, placement.vram_bytes) == (0, 4 * GIB)
    cpu = hosts.admit("c", Need(0, 10 * MIB), "cpu")  # CPU versions never join a GPU host
    assert cpu.app == f"{HOST_PREFIX}3" and cpu.placement.gpu_index is None


def test_a_restarted_manager_books_an_adopted_host_again_and_numbers_new_hosts_above_it():
    book = book_of()
    hosts = HostBook(book, BLOCK.__getitem__)
    deployed = Deployed(
        apps=(), host=f"{HOST_PREFIX}7", placements=(AppPlacement("h", node_id="n1"),)
    )
    hosts.restore("a", deployed, Need(0, 600 * MIB), "cpu")
    assert book.held()[f"{HOST_PREFIX}7#0"].ram_bytes == GIB
    assert hosts.admit("b", Need(0, 300 * MIB), "cpu").app == f"{HOST_PREFIX}7"
    assert hosts.admit("c", Need(0, 300 * MIB), "cpu").app == f"{HOST_PREFIX}8"


# ------------------------------------------------------------------ the manifest registry
def loaded_now(registry: HostRegistry, app: str, key: str) -> bool:
    """Whether the host's live replicas hold `key` now. `wait_loaded` with a deadline already
    past (whatever the registry's clock, a FakeTime one included, which moves only when a test
    moves it) returns, raises the failure a replica reported, or raises DEADLINE_EXCEEDED on its
    first check: it never waits."""
    try:
        registry.wait_loaded(app, key, -math.inf, lambda: None)
    except AspireError as err:
        if err.code != "DEADLINE_EXCEEDED":
            raise
        return False
    return True


def test_a_version_is_loaded_once_every_live_replica_reports_it():
    clock = FakeTime()
    registry = HostRegistry(clock=clock.clock)
    registry.open()
    registry.put("h", "1:m", "spec")
    assert registry.manifest("h", "r1", -1, 0) == (1, {"1:m": "spec"})
    assert registry.manifest("h", "r2", -1, 0) == (1, {"1:m": "spec"})
    registry.report("h", "r1", "1:m", None, False)
    with pytest.raises(AspireError) as err:  # r2 has not loaded it: not done by the deadline
        registry.wait_loaded("h", "1:m", clock.now - 1, lambda: None)
    assert err.value.code == "DEADLINE_EXCEEDED"
    registry.report("h", "r2", "1:m", None, False)
    assert loaded_now(registry, "h", "1:m")


def test_a_replica_that_stopped_calling_no_longer_holds_a_load_back():
    clock = FakeTime()
    registry = HostRegistry(clock=clock.clock)
    registry.open()
    registry.put("h", "1:m", "spec")
    epoch, _ = registry.manifest("h", "dead", -1, 0)
    registry.manifest("h", "r1", -1, 0)
    registry.report("h", "r1", "1:m", None, False)
    assert not loaded_now(registry, "h", "1:m")  # "dead" is live still and lacks it
    clock.now += STALE_S + 1  # "dead" never calls again; r1 goes on polling
    assert registry.manifest("h", "r1", epoch, 0) is None
    assert loaded_now(registry, "h", "1:m")


def test_a_failed_load_in_the_host_raises_its_error_and_a_new_put_forgets_it():
    registry = HostRegistry()
    registry.open()
    registry.put("h", "1:m", "spec")
    registry.manifest("h", "r1", -1, 0)
    registry.report("h", "r1", "1:m", AspireError("bad graph", "INVALID_ARGUMENT"), False)
    with pytest.raises(AspireError, match="bad graph"):  # the failure, before any deadline
        registry.wait_loaded("h", "1:m", -math.inf, lambda: None)
    registry.put("h", "1:m", "spec")  # tried again: the old failure does not count
    with pytest.raises(AspireError) as err:
        registry.wait_loaded("h", "1:m", 0, lambda: None)
    assert err.value.code == "DEADLINE_EXCEEDED"


def test_the_manifest_long_poll_answers_a_change_at_once_and_nothing_until_open():
    registry = HostRegistry()
    registry.put("h", "1:m", "spec")
    assert registry.manifest("h", "r1", -1, 0) is None  # a restarted manager not restored yet
    registry.open()
    epoch, _ = registry.manifest("h", "r1", -1, 0)
    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(registry.manifest("h", "r1", epoch, 30)), daemon=True
    )
    poll.start()
    registry.remove("h", "1:m")
    poll.join(10)
    assert answers == [(epoch + 1, {})]
    assert registry.manifest("h", "r1", epoch + 1, 0) is None  # no change


def test_unloading_waits_until_no_live_replica_holds_the_version():
    registry = HostRegistry()
    registry.open()
    registry.put("h", "1:m", "spec")
    registry.manifest("h", "r1", -1, 0)
    registry.report("h", "r1", "1:m", None, False)
    registry.remove("h", "1:m")
    assert registry.wait_gone("h", "1:m", 0) is False
    registry.report("h", "r1", "1:m", None, True)
    assert registry.wait_gone("h", "1:m", 0) is True


# ------------------------------------------------------------------ the manager with hosts
class HostBackend:
    """Models in `shared` load into hosts; the others into their own replicas."""

    def __init__(self):
        self.shared_models, self.fail = set(), set()
        self.loads, self.closed = [], []

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(0, 400 * MIB), 1

    def shared(self, name):
        return name in self.shared_models

    def host_block(self, device):
        return BLOCK[device]

    def load(self, name, version, path, placements):
        self.loads.append((name, version, "dedicated"))
        return Deployed(apps=((f"{name}-{version}", 1),))

    def load_shared(self, name, version, path, slot):
        self.loads.append((name, version, slot.app))
        if (name, version) in self.fail:
            raise AspireError("bad graph", "INVALID_ARGUMENT")
        return Deployed(apps=((slot.app, 1),), key=f"{version}:{name}", host=slot.app)

    def unload(self, deployed):
        pass

    host_replicas = 1

    def adopt(self, name, version, path, deployed):
        pass

    def close_host(self, app):
        self.closed.append(app)


@pytest.fixture
def hosted():
    backend, book = HostBackend(), book_of(ram_gib=8)
    manager = Manager(backend, num_load_threads=1, max_num_load_retries=0, book=book)
    yield manager, backend, book
    manager.shutdown()


def states(manager, name):
    return [(s["version"], s["state"], s["error_code"]) for s in manager.model_status(name)]


def test_shared_versions_fill_a_host_a_failed_one_leaves_it_and_the_last_out_closes_it(hosted):
    manager, backend, book = hosted
    backend.shared_models = {"a", "b", "c"}
    backend.fail = {("c", 1)}
    for name in ("a", "b", "c"):
        manager.set_aspired_versions(name, {1: f"/{name}/1"})
        assert manager.wait_idle(10)
    host = f"{HOST_PREFIX}1"
    assert backend.loads == [("a", 1, host), ("b", 1, host), ("c", 1, f"{HOST_PREFIX}2")]
    assert states(manager, "c") == [(1, "END", "INVALID_ARGUMENT")]
    assert backend.closed == [f"{HOST_PREFIX}2"]  # c was its only version
    assert sorted(book.held()) == [f"{host}#0"]
    assert [h["versions"] for h in manager.shared_hosts()] == [
        ["{name: a version: 1}", "{name: b version: 1}"]
    ]
    for name in ("a", "b"):
        manager.set_aspired_versions(name, {})
        assert manager.wait_idle(10)
    assert backend.closed == [f"{HOST_PREFIX}2", host] and book.held() == {}


def test_an_availability_preserving_rollout_of_a_shared_model_keeps_its_host(hosted):
    manager, backend, _ = hosted
    backend.shared_models = {"a"}
    manager.set_aspired_versions("a", {1: "/a/1"})
    assert manager.wait_idle(10)
    manager.set_aspired_versions("a", {2: "/a/2"})
    assert manager.wait_idle(10)
    assert [load[2] for load in backend.loads] == [f"{HOST_PREFIX}1"] * 2
    assert states(manager, "a")[0] == (2, "AVAILABLE", "OK")
    assert backend.closed == []


def test_a_model_moved_between_placements_loads_in_the_new_one_before_leaving_the_old(hosted):
    manager, backend, book = hosted
    backend.shared_models = {"a"}
    manager.set_aspired_versions("a", {1: "/a/1"})
    assert manager.wait_idle(10)
    backend.shared_models = set()  # the side file: "a" is dedicated now
    manager.settings_changed()  # as the control plane's apply_settings says
    manager.reconcile()
    assert manager.wait_idle(10)
    assert backend.loads == [("a", 1, f"{HOST_PREFIX}1"), ("a", 1, "dedicated")]
    assert backend.closed == [f"{HOST_PREFIX}1"]  # its only version left the host
    assert list(book.held()) == ["{name: a version: 1}"]
    assert states(manager, "a") == [(1, "AVAILABLE", "OK")]
    assert manager.serving_map().models["a"][1].key == ""
    backend.shared_models = {"a"}  # and back
    manager.settings_changed()
    manager.reconcile()
    assert manager.wait_idle(10)
    assert backend.loads[-1] == ("a", 1, f"{HOST_PREFIX}2")
    assert list(book.held()) == [f"{HOST_PREFIX}2#0"]
    assert manager.serving_map().models["a"][1].key == "1:a"


def test_a_move_that_fails_leaves_the_version_serving_where_it_was(hosted):
    manager, backend, book = hosted
    manager.set_aspired_versions("a", {1: "/a/1"})
    assert manager.wait_idle(10)
    backend.shared_models, backend.fail = {"a"}, {("a", 1)}
    manager.settings_changed()
    manager.reconcile()
    assert manager.wait_idle(10)
    assert states(manager, "a") == [(1, "AVAILABLE", "OK")]
    assert list(book.held()) == ["{name: a version: 1}"]  # the host's block was given back
    assert backend.closed == [f"{HOST_PREFIX}1"]
    manager.reconcile()  # not tried again until capacity changes
    assert manager.wait_idle(10)
    assert len(backend.loads) == 2


def test_the_status_table_shows_each_shared_versions_host_and_the_hosts():
    from cluster.cli import status_table

    host = f"{HOST_PREFIX}1"
    described = {
        "models": {
            name: [{"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
            for name in ("a", "b")
        },
        "placements": {
            "a": {"1": [{"app": host, "host": host, "replicas": 1, "running_replicas": 1}]},
            "b": {"1": [{"app": "aspire-servable-b", "replicas": 2, "running_replicas": 2}]},
        },
        "shared_hosts": [
            {
                "app": host,
                "device": "cpu",
                "node": "0123456789abcdef",
                "gpu": None,
                "block_ram_bytes": 4 * GIB,
                "block_vram_bytes": 0,
                "used_ram_bytes": 12 * MIB,
                "used_vram_bytes": 0,
                "versions": ["{name: a version: 1}"],
            }
        ],
    }
    lines = status_table(described).splitlines()
    assert lines[1].split() == ["a", "1", "AVAILABLE", "1/1", "in", "host-1", "100%"]
    assert lines[2].split() == ["b", "1", "AVAILABLE", "2/2", "100%"]
    assert lines[4].split() == ["SHARED", "HOST", "NODE", "DEVICE", "BLOCK", "RESERVED", "VERSIONS"]
    assert lines[5].split() == ["host-1", "0123456789ab", "CPU", "4.0", "GiB", "12.0", "MiB", "1"]


def test_a_host_with_two_replicas_books_both_blocks_on_the_node_its_first_one_got():
    book = Reservations([], {"n1": 8 * GIB, "n2": 7 * GIB + 512 * MIB})
    hosts = HostBook(book, BLOCK.__getitem__, replicas=2)
    slot = hosts.admit("c", Need(0, 10 * MIB), "cpu")
    # the first block goes to n1 (most free RAM); alone, the second would go to n2, which then
    # has more free RAM (7.5 GiB against 7); together, it goes to n1 too
    held = book.held()
    assert sorted(held) == [f"{HOST_PREFIX}1#0", f"{HOST_PREFIX}1#1"]
    assert {p.node_id for p in held.values()} == {"n1"} == {slot.placement.node_id}
    assert slot.replicas == 2


def test_a_host_whose_replicas_do_not_fit_together_is_refused_whole():
    book = Reservations([], {"n1": 1 * GIB, "n2": 1 * GIB})  # one block per node only
    hosts = HostBook(book, BLOCK.__getitem__, replicas=2)
    refused = hosts.admit("c", Need(0, 10 * MIB), "cpu")
    assert isinstance(refused, Refusal) and refused.reason == "host_ram"
    assert book.held() == {}


def test_a_replica_that_leaves_no_longer_holds_a_load_back():
    registry = HostRegistry()
    registry.open()
    registry.put("h", "1:m", "spec")
    registry.manifest("h", "r1", -1, 0)
    registry.manifest("h", "r2", -1, 0)
    registry.report("h", "r1", "1:m", None, False)
    assert not loaded_now(registry, "h", "1:m")  # r2 is live and lacks it
    registry.report("h", "r2", "", None, True)  # r2 is stopping (scaled down, deleted)
    assert loaded_now(registry, "h", "1:m")
