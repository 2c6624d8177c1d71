"""Resource-aware admission in the Manager, without Ray: a recording backend and a real book."""

import dataclasses
import os
import threading

import pytest

from cluster.backend.serve_backend import ServeBackend
from cluster.manager import Manager
from cluster.reservations import Reservations
from config.aspire_config import ModelSettings
from config.options import ReplicaOptions
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.units import GIB
from policies.admission import Gpu, Need, fraction_vram_bytes


class SizedBackend:
    """Each model needs `vram[name]` per replica (0: CPU) and `replicas[name]` replicas."""

    def __init__(self):
        self.vram, self.replicas, self.fail, self.measured = {}, {}, set(), {}
        self.fraction = 0.0  # --per_process_gpu_memory_fraction, as ServeBackend.need passes it
        self.loads, self.placements = [], {}
        self.lock = threading.Lock()

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        vram = self.vram.get(name, 0)
        if measured_vram_bytes:
            vram = min(vram, measured_vram_bytes)
        return Need(vram, GIB, self.fraction if vram else 0.0), self.replicas.get(name, 1)

    def load(self, name, version, path, placements):
        with self.lock:
            self.loads.append((name, version))
        if (name, version) in self.fail:
            raise AspireError("boom", "INTERNAL")
        self.placements[(name, version)] = placements
        return Deployed(
            apps=((f"{name}-{version}", 1),), measured_vram_bytes=self.measured.get((name, version))
        )

    def unload(self, deployed):
        pass


@pytest.fixture
def backend():
    return SizedBackend()


@pytest.fixture
def book():
    return Reservations([Gpu("n1", 0, 16 * GIB), Gpu("n1", 1, 16 * GIB)], {"n1": 64 * GIB})


@pytest.fixture
def manager(backend, book):
    m = Manager(
        backend, num_load_threads=2, max_num_load_retries=0, router_ack_timeout_s=1, book=book
    )
    yield m
    m.shutdown()


def status(manager, name):
    return [(s["version"], s["state"], s["error_code"]) for s in manager.model_status(name)]


def gpus_of(book):
    return {holder: row["index"] for row in book.snapshot() for holder in row["holders"]}


def load_big(manager, backend, *names):
    for name in names:
        backend.vram[name] = 10 * GIB
        manager.set_aspired_versions(name, {1: f"/{name}/1"})
    assert manager.wait_idle(5)


def test_two_big_models_land_on_different_gpus_and_a_third_is_refused(manager, backend, book):
    load_big(manager, backend, "a", "b")
    held = gpus_of(book)
    assert sorted(held.values()) == [0, 1]
    load_big(manager, backend, "c")
    assert status(manager, "c") == [(1, "END", "RESOURCE_EXHAUSTED")]
    message = manager.model_status("c")[0]["error_message"]
    assert message.startswith(
        "Insufficient resources to load servable {name: c version: 1}; "
        "needs 10.0 GiB of GPU memory, largest free block is 6.0 GiB"
    )
    assert ("c", 1) not in backend.loads  # refused before any deployment was created
    assert status(manager, "a") == [(1, "AVAILABLE", "OK")]
    assert set(manager.serving_map().models) == {"a", "b"}
    assert gpus_of(book) == held  # nothing that serves was moved or evicted


def test_refused_version_loads_once_capacity_is_released(manager, backend, book):
    load_big(manager, backend, "a", "b")
    load_big(manager, backend, "c")
    freed = gpus_of(book)["{name: a version: 1}"]
    manager.set_aspired_versions("a", {})
    assert manager.wait_idle(5)
    assert status(manager, "c") == [(1, "AVAILABLE", "OK")]
    assert gpus_of(book)["{name: c version: 1}"] == freed
    assert backend.placements[("c", 1)][0].gpu_index == freed


def test_refused_version_that_is_no_longer_aspired_is_not_retried(manager, backend):
    load_big(manager, backend, "a", "b")
    load_big(manager, backend, "c")
    manager.set_aspired_versions("c", {})
    manager.set_aspired_versions("a", {})
    assert manager.wait_idle(5)
    assert status(manager, "c") == [(1, "END", "RESOURCE_EXHAUSTED")]
    assert backend.loads.count(("c", 1)) == 0


def test_inventory_growth_retries_a_refused_version(manager, backend, book):
    load_big(manager, backend, "a", "b")
    load_big(manager, backend, "c")
    book.update_inventory(
        [Gpu("n1", 0, 16 * GIB), Gpu("n1", 1, 16 * GIB), Gpu("n2", 0, 16 * GIB)],
        {"n1": 64 * GIB, "n2": 64 * GIB},
    )
    manager.capacity_changed("node n2 joined")
    assert manager.wait_idle(5)
    assert status(manager, "c") == [(1, "AVAILABLE", "OK")]
    assert backend.placements[("c", 1)][0].node_id == "n2"


def test_new_version_without_room_is_refused_under_availability_preserving(manager, backend, book):
    load_big(manager, backend, "a", "b")
    manager.set_aspired_versions("a", {2: "/a/2"})
    assert manager.wait_idle(5)
    assert status(manager, "a") == [(2, "END", "RESOURCE_EXHAUSTED"), (1, "AVAILABLE", "OK")]
    assert manager.serving_map().models["a"].keys() == {1}


def test_resource_preserving_unloads_first_and_rolls_out(manager, backend, book):
    load_big(manager, backend, "a", "b")
    manager.set_aspired_versions("a", {2: "/a/2"})
    assert manager.wait_idle(5)
    gpu = gpus_of(book)["{name: a version: 1}"]
    manager.set_policy("a", "resource_preserving")  # the documented way around the refusal
    assert manager.wait_idle(5)
    assert status(manager, "a") == [(2, "AVAILABLE", "OK"), (1, "END", "OK")]
    assert gpus_of(book)["{name: a version: 2}"] == gpu
    assert "{name: a version: 1}" not in gpus_of(book)


def test_each_replica_reserves_its_own_share_all_or_nothing(manager, backend, book):
    backend.replicas["r"] = 2
    load_big(manager, backend, "r")
    assert sorted(p.gpu_index for p in backend.placements[("r", 1)]) == [0, 1]
    assert set(gpus_of(book)) == {
        "{name: r version: 1} replica 1 of 2",
        "{name: r version: 1} replica 2 of 2",
    }
    backend.replicas["s"] = 2
    backend.vram["s"] = 5 * GIB
    manager.set_aspired_versions("s", {1: "/s/1"})
    assert manager.wait_idle(5)
    assert status(manager, "s") == [(1, "AVAILABLE", "OK")]
    backend.replicas["t"] = 3
    load_big(manager, backend, "t")  # 3 x 10 GiB can never fit in what is left
    assert status(manager, "t") == [(1, "END", "RESOURCE_EXHAUSTED")]
    assert "replica" in manager.model_status("t")[0]["error_message"]
    assert not any("name: t" in holder for holder in gpus_of(book))  # none left behind


def test_failed_load_releases_its_reservation(manager, backend, book):
    backend.fail.add(("a", 1))
    load_big(manager, backend, "a")
    assert status(manager, "a") == [(1, "END", "INTERNAL")]
    assert gpus_of(book) == {}
    assert all(row["reserved"] == 0 for row in book.ram_snapshot())


def test_cpu_versions_reserve_host_ram_only(manager, backend, book):
    manager.set_aspired_versions("cpu", {1: "/cpu/1"})
    assert manager.wait_idle(5)
    placement = backend.placements[("cpu", 1)][0]
    assert (placement.gpu_index, placement.vram_bytes, placement.ram_bytes) == (None, 0, GIB)
    assert book.ram_snapshot()[0]["holders"] == {"{name: cpu version: 1}": GIB}


def test_measured_peak_lowers_the_next_reservation(manager, backend, book):
    backend.measured[("a", 1)] = 3 * GIB
    load_big(manager, backend, "a")
    assert book.snapshot()[0]["reserved"] + book.snapshot()[1]["reserved"] == 10 * GIB
    manager.set_aspired_versions("a", {})
    assert manager.wait_idle(5)
    manager.set_aspired_versions("a", {1: "/a/1"})
    assert manager.wait_idle(5)
    assert sum(row["reserved"] for row in book.snapshot()) == 3 * GIB


def test_concurrent_admissions_never_over_commit(backend, book):
    manager = Manager(backend, num_load_threads=8, max_num_load_retries=0, book=book)
    for i in range(12):
        backend.vram[f"m{i}"] = 6 * GIB
        manager.set_aspired_versions(f"m{i}", {1: f"/m{i}/1"})
    assert manager.wait_idle(10)
    available = [n for n in (f"m{i}" for i in range(12)) if status(manager, n)[0][1] == "AVAILABLE"]
    assert len(available) == 4  # two 6 GiB replicas fit on each 16 GiB GPU
    assert all(row["reserved"] <= row["total"] for row in book.snapshot())
    manager.shutdown()


def test_loads_refusals_and_state_are_measured(manager, backend, book):
    from core.metrics import MetricsStore

    backend.fail.add(("bad", 1))
    load_big(manager, backend, "a", "b")
    load_big(manager, backend, "c")
    manager.set_aspired_versions("bad", {1: "/bad/1"})
    assert manager.wait_idle(5)
    store = MetricsStore()
    store.apply(manager.drain_metrics())
    page = store.render_aspire(manager.metrics_state())
    # refused at first, and again after bad's failed load released its reservation
    assert 'aspire_admission_refusals_total{model="c",reason="gpu_memory"} 2' in page
    assert 'aspire_load_attempts_total{model="a",status="OK"} 1' in page
    assert 'aspire_load_attempts_total{model="bad",status="INTERNAL"} 1' in page
    assert 'aspire_servable_state{model="c",version="1",state="END"} 1' in page
    assert 'aspire_servable_state{model="a",version="1",state="AVAILABLE"} 1' in page
    assert 'aspire_traffic_weight{model="a",version="1"} 1' in page
    gpu = gpus_of(book)["{name: a version: 1}"]
    assert (
        f'aspire_servable_vram_reserved_bytes{{model="a",version="1",node="n1",gpu="{gpu}"}} '
        f"{10 * GIB}"
    ) in page
    assert 'model="c",version="1",node=' not in page  # a refused version reserves nothing


def test_a_lost_node_takes_its_versions_out_and_re_places_them_where_they_fit(
    manager, backend, book
):
    book.update_inventory(
        [Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 16 * GIB)], {"n1": 64 * GIB, "n2": 64 * GIB}
    )
    load_big(manager, backend, "a", "b")  # one on each node
    placed = {name: backend.placements[(name, 1)][0].node_id for name in ("a", "b")}
    for name in ("a", "b"):  # the backend reports where replicas run, as ServeBackend does
        with manager._lock:
            record = manager._streams[name].versions[1]
            record.deployed = dataclasses.replace(
                record.deployed, placements=(AppPlacement(f"{name}-1", node_id=placed[name]),)
            )
    lost = placed["a"]
    book.update_inventory(
        [g for g in (Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 16 * GIB)) if g.node_id != lost],
        {n: 64 * GIB for n in ("n1", "n2") if n != lost},
    )
    assert manager.nodes_lost({lost}) == ["{name: a version: 1}"]
    assert "a" not in manager.serving_map().models
    assert manager.wait_idle(5)
    # No room left on the other GPU (b holds 10 of 16 GiB): a is refused and reported.
    assert status(manager, "a") == [(1, "END", "RESOURCE_EXHAUSTED")]
    assert status(manager, "b") == [(1, "AVAILABLE", "OK")]
    kept = [n for n in ("n1", "n2") if n != lost]
    book.update_inventory(
        [Gpu(n, 0, 16 * GIB) for n in kept + ["n3"]], {n: 64 * GIB for n in kept + ["n3"]}
    )
    manager.capacity_changed("node n3 joined")
    assert manager.wait_idle(5)
    assert status(manager, "a") == [(1, "AVAILABLE", "OK")]
    assert backend.placements[("a", 1)][0].node_id == "n3"


# -- --per_process_gpu_memory_fraction ---------------------------------------------------------


def test_a_gpu_fraction_books_its_share_per_replica_and_refuses_what_no_gpu_has_room_for(
    manager, backend, book
):
    backend.fraction = 0.4  # 6.4 GiB of a 16 GiB GPU each; the 1 GiB estimate is not booked
    for name in ("a", "b", "c", "d", "e"):
        backend.vram[name] = GIB
        manager.set_aspired_versions(name, {1: f"/{name}/1"})
        assert manager.wait_idle(5)
    share = fraction_vram_bytes(0.4, 16 * GIB)
    booked = {h: b for row in book.snapshot() for h, b in row["holders"].items()}
    assert booked == {f"{{name: {n} version: 1}}": share for n in "abcd"}
    assert [row["reserved"] for row in book.snapshot()] == [2 * share, 2 * share]
    assert status(manager, "e") == [(1, "END", "RESOURCE_EXHAUSTED")]
    assert (
        "needs 6.4 GiB of GPU memory (0.4 of GPU 0's 16.0 GiB"
        in (manager.model_status("e")[0]["error_message"])
    )
    assert [status(manager, n) for n in "abcd"] == [[(1, "AVAILABLE", "OK")]] * 4


MODEL = os.path.join(os.path.dirname(__file__), "..", "data", "saved_model_half_plus_two_cpu")


def serve_backend(settings=None, **options) -> ServeBackend:
    b = ServeBackend(ReplicaOptions(**options))
    b.settings = {"m": ModelSettings(**settings)} if settings else {}
    return b


def backend_need(b: ServeBackend, has_gpus: bool = True) -> Need:
    need, _ = b.need("m", 123, os.path.join(MODEL, "00000123"), has_gpus, None)
    return need


def session_config(**gpu_options) -> bytes:
    from tensorflow.core.protobuf import config_pb2

    return config_pb2.ConfigProto(gpu_options=gpu_options).SerializeToString()


def test_serve_backend_needs_the_flag_s_fraction_on_gpus_and_none_on_cpus():
    assert backend_need(serve_backend(gpu_memory_fraction=0.4)).vram_fraction == 0.4
    assert backend_need(serve_backend(gpu_memory_fraction=0.0)).vram_fraction == 0.0
    cpu = backend_need(serve_backend(gpu_memory_fraction=0.4), has_gpus=False)
    assert (cpu.vram_bytes, cpu.vram_fraction) == (0, 0.0)
    declared = backend_need(serve_backend({"vram_bytes": 3 * GIB}, gpu_memory_fraction=0.4))
    assert (declared.vram_bytes, declared.vram_fraction) == (3 * GIB, 0.0)


def test_serve_backend_takes_the_session_config_file_s_fraction_unless_the_flag_is_set():
    config = session_config(per_process_gpu_memory_fraction=0.25)
    assert backend_need(serve_backend(session_config=config)).vram_fraction == 0.25
    both = serve_backend(session_config=config, gpu_memory_fraction=0.4)
    assert backend_need(both).vram_fraction == 0.4
