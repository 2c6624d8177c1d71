"""The manager's record of a loaded version (core/deployed.py `Deployed`) against the journal: a
stream document with the version records' "where" documents, as the manager writes them, reads
back into `Deployed` and is written back equal, byte for byte; a restarted manager adopts it."""

import copy

from cluster.manager import Manager
from cluster.manager_state import (
    MemoryStore,
    Stream,
    VersionRecord,
    dumps,
    loads,
    record_fields,
    stream_doc,
)
from cluster.recovery import plan_restore
from cluster.reservations import Reservations
from core.contracts import VersionAddress
from core.deployed import AppPlacement, Deployed
from core.units import GIB, MIB
from policies.admission import Gpu, Need

NODE_A = "6f1e0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b"
NODE_B = "0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d"
RESNET = "aspire-servable-resnet-5b1e2c4f-v3"
HOST = "aspire-servable-host-1"

# A dedicated GPU version with two replicas on two GPUs (two applications), as
# cluster/backend/serve_backend.py `ServeBackend.load` returned it, in its stored record.
DEDICATED_GPU = {
    "version": 3,
    "path": "/models/resnet/3",
    "state": "ready",
    "aspired": True,
    "error_code": "OK",
    "error_message": "",
    "where": {
        "apps": [[RESNET, 1], [f"{RESNET}-p1", 1]],
        "ram_bytes": 734003200,
        "placements": [
            {
                "app": RESNET,
                "replicas": 1,
                "min_replicas": 1,
                "node_id": NODE_A,
                "pid": 48213,
                "gpu": 0,
                "vram_bytes": 3221225472,
                "cuda_visible_devices": "0",
                "measured_vram_bytes": 2516582400,
                "session_threads": [8, 2],
            },
            {
                "app": f"{RESNET}-p1",
                "replicas": 1,
                "min_replicas": 1,
                "node_id": NODE_B,
                "pid": 51877,
                "gpu": 1,
                "vram_bytes": 3221225472,
                "cuda_visible_devices": "1",
                "measured_vram_bytes": 2483027968,
                "session_threads": [8, 2],
            },
        ],
        "measured_vram_bytes": 2516582400,
        "max_queued_requests": 1000,
    },
    "ram_bytes": 734003200,
    "load_seconds": 41.7,
    "refused": False,
    "attempts": 1,
    "interrupted": 0,
    "reservations": [
        ["{name: resnet version: 3} replica 1 of 2", NODE_A, 0, 3221225472, 734003200],
        ["{name: resnet version: 3} replica 2 of 2", NODE_B, 1, 3221225472, 734003200],
    ],
}

# A version inside a GPU shared host, as `load_shared` returned it, with the need inside the
# host's block that the harness adds ("host_need").
SHARED = {
    "version": 2,
    "path": "/models/digits/2",
    "state": "ready",
    "aspired": True,
    "error_code": "OK",
    "error_message": "",
    "where": {
        "apps": [[HOST, 2]],
        "key": "2:digits",
        "host": HOST,
        "host_vram_bytes": 8589934592,
        "ram_bytes": 52428800,
        "placements": [
            {
                "app": HOST,
                "host": HOST,
                "replicas": 2,
                "min_replicas": 2,
                "node_id": NODE_A,
                "pid": 48990,
                "gpu": 1,
                "vram_bytes": 0,
                "cuda_visible_devices": "1",
                "measured_vram_bytes": None,
                "session_threads": None,
            }
        ],
        "measured_vram_bytes": None,
        "max_queued_requests": 250,
        "host_need": [104857600, 52428800],
    },
    "ram_bytes": 52428800,
    "load_seconds": 3.2,
    "refused": False,
    "attempts": 2,
    "interrupted": 0,
    "reservations": [],
}

# A version that failed: no deployment, "where" null.
FAILED = {
    "version": 1,
    "path": "/models/resnet/1",
    "state": "error",
    "aspired": False,
    "error_code": "INVALID_ARGUMENT",
    "error_message": "bad graph",
    "where": None,
    "ram_bytes": None,
    "load_seconds": None,
    "refused": False,
    "attempts": 1,
    "interrupted": 0,
    "reservations": [],
}


def stored_stream(name, *records, measured=None):
    return {
        "name": name,
        "policy": "availability_preserving",
        "versions": [copy.deepcopy(r) for r in records],
        "measured_vram": measured or {},
    }


def test_a_stored_dedicated_gpu_version_reads_into_deployed_with_every_field():
    deployed = VersionRecord(**record_fields(DEDICATED_GPU)).deployed
    assert deployed == Deployed(
        apps=((RESNET, 1), (f"{RESNET}-p1", 1)),
        ram_bytes=734003200,
        placements=(
            AppPlacement(RESNET, 1, 1, NODE_A, 48213, 0, 3221225472, "0", 2516582400, (8, 2)),
            AppPlacement(
                f"{RESNET}-p1", 1, 1, NODE_B, 51877, 1, 3221225472, "1", 2483027968, (8, 2)
            ),
        ),
        measured_vram_bytes=2516582400,
        max_queued_requests=1000,
    )
    assert not deployed.shared and deployed.node_ids() == {NODE_A, NODE_B}
    assert deployed.to_doc() == DEDICATED_GPU["where"]


def test_a_stored_shared_version_reads_into_deployed_with_its_host_and_need():
    deployed = VersionRecord(**record_fields(SHARED)).deployed
    assert deployed.shared and deployed.device == "gpu"
    assert (deployed.host, deployed.key, deployed.host_vram_bytes) == (HOST, "2:digits", 8 * GIB)
    assert deployed.host_need == (100 * MIB, 50 * MIB)
    assert deployed.placements[0].host == HOST and deployed.placements[0].session_threads is None
    assert VersionAddress.from_deployed(deployed) == VersionAddress(((HOST, 2),), 250, "2:digits")
    assert deployed.to_doc() == SHARED["where"]


def test_a_journal_document_reads_back_into_deployed_and_writes_back_the_same_bytes():
    doc = stored_stream("resnet", FAILED, DEDICATED_GPU, measured={"3": 2516582400})
    shared = stored_stream("digits", SHARED)
    data = {"model/resnet": dumps(doc), "model/digits": dumps(shared)}
    plan = plan_restore(data, {RESNET, f"{RESNET}-p1", HOST}, lambda n: f"aspire-{n}-")
    assert plan.summary() == {"models": 2, "adopted": 2, "dropped": 0, "orphans": 0}
    streams = {s.name: s for s in plan.streams}
    for stream, original in ((streams["resnet"], doc), (streams["digits"], shared)):
        measured = {stream.name: {int(v): b for v, b in original["measured_vram"].items()}}
        written = stream_doc(stream, measured[stream.name])
        assert written == original
        assert dumps(written) == dumps(original)  # the same bytes: key order kept too


def test_status_placements_are_the_stored_placement_documents():
    for record in (DEDICATED_GPU, SHARED):
        deployed = Deployed.from_doc(loads(dumps(record["where"])))
        assert [p.to_doc() for p in deployed.placements] == record["where"]["placements"]


class HostBackend:
    """Adopts what it is told; loads nothing (everything stored is adopted)."""

    host_replicas = 1

    def __init__(self):
        self.adopted = []

    def need(self, name, version, path, has_gpus, measured_vram_bytes):
        return Need(0, GIB), 1

    def load(self, name, version, path, placements=None):
        raise AssertionError("a restarted manager loads nothing it adopts")

    def unload(self, deployed):
        raise AssertionError("nothing is deleted")

    def shared(self, name):
        return name == "digits"

    def host_block(self, device):
        return Need(8 * GIB, GIB)

    def load_shared(self, name, version, path, slot):
        raise AssertionError("a restarted manager loads nothing it adopts")

    def adopt(self, name, version, path, deployed):
        self.adopted.append((name, version, deployed.key))

    def close_host(self, app):
        raise AssertionError("the host keeps its version")


def test_a_restarted_manager_adopts_what_the_journal_stored_and_serves_it_unchanged():
    store = MemoryStore()
    store.put("manager/default/model/resnet", dumps(stored_stream("resnet", DEDICATED_GPU)))
    store.put("manager/default/model/digits", dumps(stored_stream("digits", SHARED)))
    book = Reservations(
        [Gpu(NODE_A, 0, 16 * GIB), Gpu(NODE_A, 1, 16 * GIB), Gpu(NODE_B, 1, 16 * GIB)],
        {NODE_A: 64 * GIB, NODE_B: 64 * GIB},
    )
    backend = HostBackend()
    manager = Manager(backend, book=book, store=store, router_grace_s=0)
    try:
        summary = manager.restore(lambda: {RESNET, f"{RESNET}-p1", HOST}, lambda n: f"x-{n}-")
        assert summary == {"models": 2, "adopted": 2, "dropped": 0, "orphans": 0}
        assert backend.adopted == [("digits", 2, "2:digits")]
        models = manager.serving_map().models
        assert models["resnet"][3] == VersionAddress(((RESNET, 1), (f"{RESNET}-p1", 1)), 1000)
        assert models["digits"][2] == VersionAddress(((HOST, 2),), 250, "2:digits")
        where = {(n, v): d.to_doc() for n, v, d in manager.deployed()}
        assert where == {("resnet", 3): DEDICATED_GPU["where"], ("digits", 2): SHARED["where"]}
        assert sorted(book.held()) == [
            f"{HOST}#0",
            "{name: resnet version: 3} replica 1 of 2",
            "{name: resnet version: 3} replica 2 of 2",
        ]
        # written again (the state loop's flush): the documents it stores are the ones it read
        for name in ("resnet", "digits"):
            with manager._lock:
                manager.touch(manager._streams[name])
        manager.flush_state()
        again = loads(store.get("manager/default/model/resnet"))
        assert again["versions"] == [DEDICATED_GPU]
        assert loads(store.get("manager/default/model/digits"))["versions"] == [SHARED]
    finally:
        manager.shutdown()


def test_a_stream_document_round_trips_through_stream_doc():
    stream = Stream("m")
    record = VersionRecord(**record_fields(SHARED))
    stream.versions[record.version] = record
    assert stream_doc(stream, {})["versions"] == [SHARED]
