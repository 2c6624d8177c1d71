"""A Manager that dies and a new one that takes over from the state it stored, without Ray.

`Serve` stands in for Ray Serve's application table (loads create applications, unloads delete
them), shared by every incarnation, as Serve outlives the manager. An incarnation dies when its
`Process` is killed: from then on nothing it does reaches the store or Serve, as with a killed
process, while its threads held in a gated load stay where they were.
"""

import threading
import time

import pytest

from cluster.manager import Manager
from cluster.manager_state import (
    MAX_INTERRUPTED_LOADS,
    MemoryStore,
    decode_value,
    dumps,
    encode_value,
    loads,
)
from cluster.publisher import EPOCH_BLOCK
from cluster.reservations import Reservations
from core.deployed import AppPlacement, Deployed
from core.errors import AspireError
from core.units import GIB
from policies.admission import Gpu, Need


class Serve:
    """Applications `<name>-v<version>` (`-p<i>` for further GPUs); loads may be gated after
    the applications exist, as a half-done load leaves them."""

    def __init__(self):
        self.apps: set[str] = set()
        self.events: list[tuple] = []
        self.gate: dict[tuple[str, int], threading.Event] = {}
        self.fail: dict[tuple[str, int], AspireError] = {}
        self.lock = threading.Lock()
        self.hosts: dict[str, set[str]] = {}  # shared host application -> servable keys
        self.adopted: list[tuple] = []

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        if name.startswith("gpu"):  # two replicas that cannot share a 16 GiB GPU
            return Need(10 * GIB, GIB), 2
        return Need(0, GIB), 1

    def load(self, name, version, path, placements=None):
        gpus = list(dict.fromkeys((p.node_id, p.gpu_index) for p in placements or []))
        apps = [f"{name}-v{version}" + (f"-p{i}" if i else "") for i in range(max(1, len(gpus)))]
        with self.lock:
            self.events.append(("load", name, version, time.monotonic()))
            self.apps.update(apps)
        gate = self.gate.get((name, version))
        if gate is not None:
            gate.wait(30)
        if (name, version) in self.fail:
            self.unload(Deployed.of_apps(apps))
            raise self.fail[(name, version)]
        return Deployed(
            apps=tuple((a, 1) for a in apps),
            ram_bytes=GIB,
            placements=tuple(AppPlacement(a, pid=1000 + version) for a in apps),
        )

    def unload(self, deployed):
        with self.lock:
            if deployed.shared:  # out of its host, which goes on
                self.hosts[deployed.host].discard(deployed.key)
                return
            for app in deployed.app_names():
                self.events.append(("delete", app, time.monotonic()))
                self.apps.discard(app)

    # shared placement: models named "shared*" load into hosts
    hosts: dict
    host_replicas = 1

    def shared(self, name):
        return name.startswith("shared")

    def host_block(self, device):
        return Need(0, 4 * GIB)

    def load_shared(self, name, version, path, slot):
        key = f"{version}:{name}"
        with self.lock:
            self.apps.add(slot.app)
            self.hosts.setdefault(slot.app, set()).add(key)
        return Deployed(
            apps=((slot.app, 1),),
            key=key,
            host=slot.app,
            placements=(AppPlacement(slot.app, host=slot.app, node_id="n1"),),
        )

    def close_host(self, app):
        with self.lock:
            self.apps.discard(app)
            self.hosts.pop(app, None)

    def adopt(self, name, version, path, deployed):
        self.adopted.append((name, version, deployed.host))


class Process:
    """One incarnation's way to the store and to Serve, until it is killed."""

    def __init__(self, serve, store):
        self.serve, self.store, self.dead = serve, store, False

    def get(self, key):
        return self.store.get(key)

    def get_prefix(self, prefix):
        return self.store.get_prefix(prefix)

    def delete_prefix(self, prefix):
        if not self.dead:
            self.store.delete_prefix(prefix)

    def put(self, key, value):
        if not self.dead:
            self.store.put(key, value)

    def need(self, *args):
        return self.serve.need(*args)

    def load(self, *args):
        if self.dead:
            raise RuntimeError("this manager is dead")
        return self.serve.load(*args)

    def shared(self, name):
        return self.serve.shared(name)

    def host_block(self, device):
        return self.serve.host_block(device)

    def load_shared(self, *args):
        if self.dead:
            raise RuntimeError("this manager is dead")
        return self.serve.load_shared(*args)

    host_replicas = 1

    def close_host(self, app):
        if not self.dead:
            self.serve.close_host(app)

    def adopt(self, *args):
        self.serve.adopt(*args)

    def unload(self, *args):
        if not self.dead:
            self.serve.unload(*args)


def app_prefix(name):
    return f"{name}-v"


def new_book():
    return Reservations([Gpu("n1", 0, 16 * GIB), Gpu("n1", 1, 16 * GIB)], {"n1": 64 * GIB})


class Cluster:
    """One Serve and one store; incarnations of the manager started and killed on them."""

    def __init__(self, grace_s=0.3):
        self.serve, self.store, self.grace_s = Serve(), MemoryStore(), grace_s
        self.managers = []

    def start(self, restore: bool):
        process, book = Process(self.serve, self.store), new_book()
        m = Manager(
            process,
            num_load_threads=4,
            max_num_load_retries=0,
            router_ack_timeout_s=2,
            book=book,
            store=process,
            router_grace_s=self.grace_s,
        )
        m.process, m.book = process, book
        self.managers.append(m)
        m.summary = m.restore(lambda: set(self.serve.apps), app_prefix) if restore else None
        return m

    def kill(self, m):
        m.flush_state()  # what the state loop has written by now (it runs every 100 ms)
        m.process.dead = True

    def close(self):
        for gate in self.serve.gate.values():
            gate.set()
        for m in self.managers:
            m.shutdown()


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.close()


def load(m, name, versions):
    m.set_aspired_versions(name, {v: f"/{name}/{v}" for v in versions})
    assert m.wait_idle(10)


def settle_until(m, predicate, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m.wait_idle(0.2)
        if predicate():
            return
    raise AssertionError("condition not reached")


def totals(book):
    return (
        sum(g["reserved"] for g in book.snapshot()),
        sum(h["reserved"] for h in book.ram_snapshot()),
    )


def test_restore_adopts_available_keeps_end_and_redoes_a_load_cut_short(cluster):
    serve = cluster.serve
    serve.fail[("bad", 1)] = AspireError("Could not find SavedModel", "NOT_FOUND")
    m1 = cluster.start(restore=False)
    load(m1, "a", [1])
    load(m1, "gpu_b", [1])  # two replicas, one per GPU: two applications and reservations
    load(m1, "bad", [1])
    load(m1, "c", [1])
    serve.gate[("c", 2)] = threading.Event()
    m1.set_aspired_versions("c", {2: "/c/2"})
    m1.reconcile()
    settle_until(m1, lambda: "c-v2" in serve.apps)  # half-loaded: the application exists
    before = m1.list_models()
    held_before, map_before, totals_before = m1.book.held(), m1.serving_map(), totals(m1.book)
    cluster.kill(m1)
    seen = len(serve.events)

    m2 = cluster.start(restore=True)
    serve.gate.pop(("c", 2)).set()  # the dead incarnation's load thread ends, doing nothing
    print(f"\nrestored: {m2.summary}")
    assert m2.summary == {"models": 4, "adopted": 3, "dropped": 1, "orphans": 1}
    assert m2.list_models() == before  # c v2 still shows LOADING: it is loaded again
    assert m2.model_status("bad")[0]["error_message"] == "Could not find SavedModel"
    served = m2.serving_map()
    assert served.models == map_before.models  # same versions, same applications
    assert served.epoch > map_before.epoch
    # adopted reservations are booked exactly where they were; c v2's was not (nothing of it runs)
    assert m2.book.held() == {k: p for k, p in held_before.items() if "name: c version: 2" not in k}
    assert totals(m2.book) == (totals_before[0], totals_before[1] - GIB)  # all but c v2's RAM

    settle_until(
        m2,
        lambda: (
            m2.model_status("c")[0]["state"] == "AVAILABLE"
            and m2.model_status("c")[1]["state"] == "END"
        ),
    )
    assert serve.apps == {"a-v1", "gpu_b-v1", "gpu_b-v1-p1", "c-v2"}
    later = serve.events[seen:]
    assert [e[1:3] for e in later if e[0] == "load"] == [("c", 2)]  # nothing serving reloaded
    # the half-loaded application went before c v2 was loaded again, then v1 was unloaded
    assert [e[0] if e[0] == "load" else e[1] for e in later] == ["c-v2", "load", "c-v1"]
    # c v2 booked again, c v1 released: nothing leaked, nothing booked twice
    assert sorted(m2.book.held()) == sorted(k for k in held_before if "name: c version: 1" not in k)


def test_a_version_is_stored_available_before_any_router_can_route_to_it(cluster):
    """What a restart reads is never behind what routers route to (it would delete it)."""
    m = cluster.start(restore=False)
    routed, ahead, stop, applied = [], [], threading.Event(), [0]

    def router():
        while not stop.is_set():
            update = m.wait_for_serving_map(applied[0], "router", 0.05)
            if update is None:
                continue
            applied[0] = update.epoch
            for name, versions in update.models.items():
                doc = loads(cluster.store.get(f"manager/default/model/{name}"))
                stored = {r["version"]: r["state"] for r in doc["versions"]}
                routed.extend((name, v) for v in versions)
                ahead.extend(
                    (name, v, stored.get(v))
                    for v in versions
                    if stored.get(v) not in ("ready", "unloading", "disabled")
                )

    thread = threading.Thread(target=router, daemon=True)
    thread.start()
    for version in (1, 2, 3):  # 20 models loading at once, then rolled out twice
        for i in range(20):
            m.set_aspired_versions(f"m{i}", {version: f"/m{i}/{version}"})
        assert m.wait_idle(20)
        settle_until(m, lambda: applied[0] == m.serving_map().epoch)  # it saw this version
    stop.set()
    thread.join(5)
    print(
        f"\n{len(set(routed))} versions seen by the router; {len(ahead)} not yet stored AVAILABLE"
    )
    assert len(set(routed)) == 60 and ahead == []


def test_no_deployment_is_deleted_before_the_router_grace_and_known_routers_caught_up():
    cluster = Cluster(grace_s=1.5)
    serve = cluster.serve
    try:
        m1 = cluster.start(restore=False)
        load(m1, "u", [1])
        epoch = m1.serving_map().epoch
        m1.wait_for_serving_map(epoch, "router-1", 0)  # a router that will not acknowledge again
        m1.set_aspired_versions("u", {})
        m1.reconcile()  # u v1 UNLOADING: out of the map, waiting for router-1
        settle_until(m1, lambda: m1.model_status("u")[0]["state"] == "UNLOADING")
        cluster.kill(m1)

        m2 = cluster.start(restore=True)
        restored_at = time.monotonic()

        def kept_until(t):
            while time.monotonic() < t:
                assert "u-v1" in serve.apps, f"deleted {time.monotonic() - restored_at:.2f} s in"
                time.sleep(0.02)

        kept_until(restored_at + 0.5)  # no router known yet: none is waited for but the grace
        fresh = m2.wait_for_serving_map(epoch, "router-2", 0)  # router-2 polls, old epoch
        assert fresh is not None and fresh.models == {}
        kept_until(restored_at + cluster.grace_s + 0.5)  # past the grace: router-2 has not acked
        m2.wait_for_serving_map(fresh.epoch, "router-2", 0)
        settle_until(m2, lambda: "u-v1" not in serve.apps)
        waited = next(e[2] for e in serve.events if e[0] == "delete") - restored_at
        print(
            f"\ndeleted u v1 {waited:.2f} s after the restore (grace {cluster.grace_s} s, then "
            "the acknowledgement of the router known by then)"
        )
        assert m2.model_status("u") == [
            {
                "version": 1,
                "state": "END",
                "error_code": "OK",
                "error_message": "",
                "aspired": False,
            }
        ]
    finally:
        cluster.close()


def test_a_refused_version_stays_refused_and_is_retried_when_capacity_grows(cluster):
    m1 = cluster.start(restore=False)
    load(m1, "gpu_b", [1])  # 10 GiB on each 16 GiB GPU
    load(m1, "gpu_c", [1])  # needs the same again: refused
    refused = m1.model_status("gpu_c")
    assert refused[0]["error_code"] == "RESOURCE_EXHAUSTED"
    cluster.kill(m1)
    m2 = cluster.start(restore=True)
    assert m2.model_status("gpu_c") == refused and m2.summary["dropped"] == 0
    assert m2.wait_idle(5) and m2.model_status("gpu_c") == refused  # not retried by the restart
    m2.book.update_inventory([Gpu("n1", i, 16 * GIB) for i in range(4)], {"n1": 64 * GIB})
    m2.capacity_changed("two GPUs joined")
    settle_until(m2, lambda: m2.model_status("gpu_c")[0]["state"] == "AVAILABLE")
    assert m2.model_status("gpu_b")[0]["state"] == "AVAILABLE"


def test_a_load_cut_short_by_every_restart_ends_aborted(cluster):
    serve = cluster.serve
    serve.gate[("x", 1)] = threading.Event()  # the load never finishes: each incarnation dies in it

    def loads():
        return sum(1 for e in serve.events if e[0] == "load")

    m = cluster.start(restore=False)
    m.set_aspired_versions("x", {1: "/x/1"})
    m.reconcile()
    for restart in range(1, MAX_INTERRUPTED_LOADS + 1):
        # (again) LOADING, and stored so
        settle_until(m, lambda restart=restart: loads() == restart)
        cluster.kill(m)
        m = cluster.start(restore=True)
    settle_until(m, lambda: m.model_status("x")[0]["state"] == "END")
    assert loads() == MAX_INTERRUPTED_LOADS and "x-v1" not in serve.apps
    status = m.model_status("x")[0]
    print(f"\nafter {MAX_INTERRUPTED_LOADS} restarts: {status}")
    assert (status["state"], status["error_code"]) == ("END", "ABORTED")
    assert f"interrupted by {MAX_INTERRUPTED_LOADS} restarts" in status["error_message"]


def test_epoch_continues_above_every_epoch_published_before(cluster):
    m1 = cluster.start(restore=False)
    load(m1, "a", [1])
    for i in range(EPOCH_BLOCK + 5):  # past one block: the ceiling was raised while serving
        m1.set_labels({"a": {"stable": 1}} if i % 2 else {})
    last = m1.serving_map().epoch
    cluster.kill(m1)
    m2 = cluster.start(restore=True)
    fresh = m2.wait_for_serving_map(last, "router", 0)  # no wait: the router's map is old
    assert fresh is not None and fresh.epoch > last
    print(
        f"\nepoch {last} before the restart, {fresh.epoch} after; "
        f"{cluster.store.writes} keys written in all"
    )


def test_state_writes_and_restore_cost_with_1000_models():
    """1,000 models x 3 versions with admission, as bench/reconcile.py runs them."""
    serve, store = Serve(), MemoryStore()
    book = Reservations(
        [Gpu(f"n{n}", i, 80 * GIB) for n in range(8) for i in range(8)],
        {f"n{n}": 2048 * GIB for n in range(8)},
    )
    m1 = Manager(serve, num_load_threads=16, max_num_load_retries=0, book=book, store=store)
    names = [f"m{i:04d}" for i in range(1000)]
    for name in names:
        m1.set_aspired_versions(name, {v: f"/{name}/{v}" for v in (1, 2, 3)})
    assert m1.wait_idle(120)
    m1.flush_state()
    writes, size = store.writes, store.bytes_written
    started = time.perf_counter()
    for name in names:  # the source's next poll: nothing changed, so nothing is written
        m1.set_aspired_versions(name, {v: f"/{name}/{v}" for v in (1, 2, 3)})
    steady = m1.flush_state()
    poll_ms = (time.perf_counter() - started) * 1000
    m1.set_labels({names[0]: {"stable": 1}})
    m1.set_aspired_versions(names[0], {v: f"/{names[0]}/{v}" for v in (2, 3)})
    started = time.perf_counter()
    one = m1.flush_state()
    one_ms = (time.perf_counter() - started) * 1000
    keys = store.get_prefix("manager/default/model/")
    with m1._lock:
        for stream in m1._streams.values():
            m1.touch(stream)
    started = time.perf_counter()
    full = m1.flush_state()
    full_ms = (time.perf_counter() - started) * 1000
    m1.shutdown()

    m2 = Manager(
        serve,
        book=Reservations(
            [Gpu(f"n{n}", i, 80 * GIB) for n in range(8) for i in range(8)],
            {f"n{n}": 2048 * GIB for n in range(8)},
        ),
        store=store,
    )
    started = time.perf_counter()
    summary = m2.restore(lambda: set(serve.apps), app_prefix)
    restore_ms = (time.perf_counter() - started) * 1000
    m2.shutdown()
    per_key = sum(len(v) for v in keys.values()) / len(keys)
    print(
        f"\n1,000 models x 3 versions: {writes} key writes while loading ({size / 1e6:.1f} MB), "
        f"{per_key:.0f} B per model key; re-poll of every model: {steady} writes in "
        f"{poll_ms:.0f} ms; one model changed: {one} write in {one_ms:.2f} ms; rewriting all "
        f"1,000 keys: {full} writes in {full_ms:.0f} ms; restore: {restore_ms:.0f} ms {summary}"
    )
    assert steady == 0 and one == 1 and full == 1000
    assert len(keys) == 1000
    assert summary == {"models": 1000, "adopted": 3000, "dropped": 0, "orphans": 0}
    assert totals(m2._book) == totals(book)


def test_config_values_round_trip_through_json():
    from config.aspire_config import Autoscaling, ModelSettings
    from config.model_config import ModelSource
    from policies.aspired import All, Latest, Specific
    from policies.traffic import TrafficSplit

    value = {
        "models": [
            ModelSource("a", "/m/a", Latest(2)),
            ModelSource("b", "gs://b", All()),
            ModelSource("c", "/m/c", Specific((3, 1))),
        ],
        "settings": {
            "a": ModelSettings(
                "resource_preserving",
                TrafficSplit((("stable", 90.0), (2, 10.0))),
                autoscaling=Autoscaling(1, 4, 2.5, None, 30.0),
            )
        },
        "labels": {"a": {"stable": 1}},
    }
    assert decode_value(loads(dumps(encode_value(value)))) == value
    with pytest.raises(TypeError):
        encode_value(object())
    with pytest.raises(ValueError, match="unknown stored type"):
        decode_value({"@type": "os.system", "fields": {}})


def test_application_prefix_matches_servable_application_names():
    from cluster.backend.serve_state import app_prefix as _app_prefix
    from cluster.manager_state import app_owner
    from core.names import app_name

    names = ["half_plus_two", "m1", "odd name/with:chars", "v12"]
    prefixes = {_app_prefix(n): n for n in names}
    for name in names:
        for version in (0, 7, 123):
            assert app_name(name, version) == _app_prefix(name) + str(version)
            assert app_owner(app_name(name, version), prefixes) == (name, version)
            assert app_owner(f"{app_name(name, version)}-p2", prefixes) == (name, version)
    assert app_owner("aspire-router", prefixes) is None


def test_a_restarted_manager_adopts_shared_versions_into_the_same_host_and_books_its_block(
    cluster,
):
    serve = cluster.serve
    m1 = cluster.start(restore=False)
    for name in ("shared_a", "shared_b", "dedicated"):
        load(m1, name, [1])
    [host] = m1.shared_hosts()
    map_before = m1.serving_map()
    cluster.kill(m1)

    m2 = cluster.start(restore=True)
    assert m2.summary == {"models": 3, "adopted": 3, "dropped": 0, "orphans": 0}
    assert m2.shared_hosts() == [host]  # same host, same versions, same use of its block
    assert sorted(serve.adopted) == [
        ("shared_a", 1, host["app"]),
        ("shared_b", 1, host["app"]),
    ]
    assert m2.serving_map().models == map_before.models
    assert m2.book.held()[f"{host['app']}#0"].ram_bytes == 4 * GIB
    load(m2, "shared_c", [1])  # joins the adopted host; no second host opens
    assert [h["app"] for h in m2.shared_hosts()] == [host["app"]]
    assert serve.hosts[host["app"]] == {"1:shared_a", "1:shared_b", "1:shared_c"}
    for name in ("shared_a", "shared_b", "shared_c"):
        load(m2, name, [])
    assert m2.shared_hosts() == [] and host["app"] not in serve.apps
    assert f"{host['app']}#0" not in m2.book.held()
