"""Reservation book: best fit, host RAM admission, refusals, release, inventory updates, needs
given as a fraction of a GPU (--per_process_gpu_memory_fraction) and a concurrent property test
that over-commit never happens."""

import math
import random
import threading

import pytest

from cluster.host_admission import HostBook
from cluster.reservations import Reservations
from core.units import GIB, MIB, format_bytes, parse_bytes
from policies.admission import (
    CUDA_CONTEXT_BYTES,
    VRAM_FACTOR,
    VRAM_WORKSPACE_BYTES,
    Gpu,
    HostSlot,
    Need,
    Placement,
    Refusal,
    estimate_vram_bytes,
    fraction_vram_bytes,
    replica_need,
)

S = "{name: m version: %d}"


def book(*sizes_gib, node="n1", ram_gib=64, used=0):
    gpus = [Gpu(node, i, int(s * GIB), used) for i, s in enumerate(sizes_gib)]
    return Reservations(gpus, {node: int(ram_gib * GIB)})


def refusal(reservations, servable, need, reason=None):
    """The refusal's message; the refusal holds nothing and carries its bounded reason."""
    refused = reservations.reserve(servable, need)
    assert isinstance(refused, Refusal), refused
    assert refused.code == "RESOURCE_EXHAUSTED"
    assert servable not in reservations.held()
    if reason is not None:
        assert refused.reason == reason
    return refused.message


# -- best fit ---------------------------------------------------------------------------------


def test_best_fit_picks_the_tightest_gpu_that_fits():
    r = Reservations(
        [Gpu("n1", 0, 16 * GIB), Gpu("n1", 1, 8 * GIB), Gpu("n2", 0, 12 * GIB)],
        {"n1": 64 * GIB, "n2": 64 * GIB},
    )
    assert r.reserve(S % 1, Need(6 * GIB)) == Placement("n1", 1, 6 * GIB, 0)
    assert r.reserve(S % 2, Need(6 * GIB)) == Placement("n2", 0, 6 * GIB, 0)  # n1/1 has 2 left
    assert r.reserve(S % 3, Need(2 * GIB)) == Placement("n1", 1, 2 * GIB, 0)  # exact fit
    assert r.reserve(S % 4, Need(7 * GIB)) == Placement("n1", 0, 7 * GIB, 0)


def test_two_10gib_models_land_on_different_16gib_gpus_and_a_third_is_refused():
    r = book(16, 16)
    a = r.reserve(S % 1, Need(10 * GIB))
    b = r.reserve(S % 2, Need(10 * GIB))
    assert (a.gpu_index, b.gpu_index) == (0, 1)
    msg = refusal(r, S % 3, Need(10 * GIB), "gpu_memory")
    assert msg == (
        "Insufficient resources to load servable {name: m version: 3}; needs 10.0 GiB "
        "of GPU memory, largest free block is 6.0 GiB (node n1 GPU 0)"
    )


def test_ties_go_to_lowest_node_then_index():
    r = Reservations(
        [Gpu("n2", 0, 8 * GIB), Gpu("n1", 1, 8 * GIB), Gpu("n1", 0, 8 * GIB)],
        {"n1": GIB, "n2": GIB},
    )
    assert r.reserve("a", Need(GIB)) == Placement("n1", 0, GIB, 0)


def test_used_by_others_is_respected():
    r = Reservations(
        [
            Gpu("n1", 0, 16 * GIB, used_by_others_bytes=10 * GIB),
            Gpu("n1", 1, 16 * GIB, used_by_others_bytes=4 * GIB),
        ],
        {"n1": 64 * GIB},
    )
    assert r.reserve("a", Need(6 * GIB)).gpu_index == 0  # 6 free on GPU 0: tightest
    assert r.reserve("b", Need(6 * GIB)).gpu_index == 1
    msg = refusal(r, "c", Need(7 * GIB), "gpu_memory")
    assert msg.endswith("largest free block is 6.0 GiB (node n1 GPU 1)")


def test_gpu_need_also_reserves_host_ram_on_the_same_node():
    r = Reservations(
        [Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 24 * GIB)], {"n1": 2 * GIB, "n2": 32 * GIB}
    )
    p = r.reserve("a", Need(8 * GIB, 4 * GIB))  # n1 is tighter but lacks RAM
    assert p == Placement("n2", 0, 8 * GIB, 4 * GIB)
    msg = refusal(r, "b", Need(8 * GIB, 40 * GIB), "host_ram")
    assert msg == (
        "Insufficient resources to load servable b; needs 8.0 GiB of GPU memory and "
        "40.0 GiB of host RAM on the same node, largest free host RAM next to a "
        "fitting GPU is 28.0 GiB (node n2)"
    )


# -- CPU-only ---------------------------------------------------------------------------------


def test_cpu_only_need_reserves_ram_on_the_node_with_most_free_ram():
    r = Reservations([Gpu("n1", 0, 16 * GIB)], {"n1": 8 * GIB, "n2": 6 * GIB})
    assert r.reserve("a", Need(ram_bytes=3 * GIB)) == Placement("n1", None, 0, 3 * GIB)
    assert r.reserve("b", Need(ram_bytes=3 * GIB)) == Placement("n2", None, 0, 3 * GIB)
    assert r.reserve("c", Need(ram_bytes=3 * GIB)) == Placement("n1", None, 0, 3 * GIB)
    assert r.snapshot()[0]["reserved"] == 0  # no GPU memory touched
    msg = refusal(r, S % 7, Need(ram_bytes=4 * GIB), "host_ram")
    assert msg == (
        "Insufficient resources to load servable {name: m version: 7}; needs 4.0 GiB "
        "of host RAM, largest free block is 3.0 GiB (node n2)"
    )
    assert [row["reserved"] for row in r.ram_snapshot()] == [6 * GIB, 3 * GIB]


def test_ray_cpus_are_booked_per_node_and_a_node_out_of_cpus_admits_nothing_more():
    # head: 0.75 Ray CPUs left for replicas (its router holds 0.25), worker: 1
    r = Reservations([], {"head": 64 * GIB, "w1": 8 * GIB}, {"head": 0.75, "w1": 1.0})
    need = Need(ram_bytes=GIB, cpus=0.5)
    first = r.reserve(S % 1, need)
    assert first == Placement("head", None, 0, GIB, 0.5)  # most free RAM, CPUs fit
    second = r.reserve(S % 2, need)  # head has 0.25 left: the worker takes it
    assert isinstance(second, Placement) and second.node_id == "w1"
    r.reserve(S % 3, Need(ram_bytes=GIB, cpus=0.5))  # the worker's last half CPU
    message = refusal(r, S % 4, need, reason="cpus")
    assert "needs 0.5 Ray CPUs (--num_cpus_per_replica), most free on a node is 0.25" in message
    assert [row["cpus"] for row in r.ram_snapshot()] == [
        {"total": 0.75, "reserved": 0.5, "free": 0.25},
        {"total": 1.0, "reserved": 1.0, "free": 0.0},
    ]
    r.release(S % 1)
    assert r.reserve(S % 4, need).node_id == "head"  # released CPUs count again


def test_a_gpu_need_goes_only_to_a_gpu_on_a_node_with_the_cpus_it_books():
    r = Reservations(
        [Gpu("a", 0, 16 * GIB), Gpu("b", 0, 40 * GIB)],
        {"a": 64 * GIB, "b": 64 * GIB},
        {"a": 0.0, "b": 1.0},
    )
    placed = r.reserve(S % 1, Need(8 * GIB, GIB, cpus=1.0))  # best fit would be a's GPU
    assert (placed.node_id, placed.gpu_index, placed.cpus) == ("b", 0, 1.0)


def test_a_need_short_of_memory_as_well_as_cpus_is_refused_for_the_memory():
    r = Reservations([], {"n1": 8 * GIB}, {"n1": 0.0})
    assert "host RAM" in refusal(r, S % 1, Need(ram_bytes=16 * GIB, cpus=1.0), reason="host_ram")
    assert "Ray CPUs" in refusal(r, S % 2, Need(ram_bytes=GIB, cpus=1.0), reason="cpus")


def test_without_cpu_counts_and_with_zero_cpu_needs_cpus_never_refuse():
    assert isinstance(
        Reservations([], {"n1": 8 * GIB}).reserve(S % 1, Need(0, GIB, cpus=64)), Placement
    )
    r = Reservations([], {"n1": 8 * GIB}, {"n1": 0.0})
    assert isinstance(r.reserve(S % 1, Need(0, GIB)), Placement)


def test_refusals_with_nothing_known():
    r = Reservations([], {})
    assert "no GPUs are known" in refusal(r, "a", Need(GIB), "no_gpus")
    assert "no nodes are known" in refusal(r, "a", Need(ram_bytes=GIB), "no_nodes")
    r = Reservations([], {"n1": GIB})
    assert r.reserve("a", Need()) == Placement("n1", None, 0, 0)


def test_refusal_disturbs_nothing():
    r = book(16)
    r.reserve("a", Need(10 * GIB))
    before = r.snapshot()
    refusal(r, "b", Need(10 * GIB))
    assert r.snapshot() == before and set(r.held()) == {"a"}


# -- release ----------------------------------------------------------------------------------


def test_release_frees_and_is_idempotent():
    r = book(16)
    r.reserve("a", Need(10 * GIB))
    refusal(r, "b", Need(10 * GIB))
    r.release("a")
    r.release("a")
    r.release("never held")
    assert r.reserve("b", Need(10 * GIB)).gpu_index == 0
    assert r.snapshot()[0]["holders"] == {"b": 10 * GIB}


def test_a_key_cannot_hold_two_reservations():
    r = book(16)
    r.reserve("a", Need(GIB))
    with pytest.raises(ValueError, match="already holds"):
        r.reserve("a", Need(GIB))


# -- snapshot / inventory updates -------------------------------------------------------------


def test_snapshot_contents():
    r = Reservations([Gpu("n1", 1, 16 * GIB, GIB), Gpu("n1", 0, 8 * GIB)], {"n1": 64 * GIB})
    r.reserve("{name: a version: 1}", Need(5 * GIB))
    r.reserve("{name: b version: 2}", Need(3 * GIB))
    r.reserve("{name: c version: 1}", Need(12 * GIB))
    assert r.snapshot() == [
        {
            "node": "n1",
            "index": 0,
            "total": 8 * GIB,
            "reserved": 8 * GIB,
            "used_by_others": 0,
            "free": 0,
            "holders": {"{name: a version: 1}": 5 * GIB, "{name: b version: 2}": 3 * GIB},
        },
        {
            "node": "n1",
            "index": 1,
            "total": 16 * GIB,
            "reserved": 12 * GIB,
            "used_by_others": GIB,
            "free": 3 * GIB,
            "holders": {"{name: c version: 1}": 12 * GIB},
        },
    ]


def test_shrinking_a_gpu_keeps_reservations_and_admits_nothing_over_total():
    r = book(16)
    r.reserve("a", Need(10 * GIB))
    r.update_inventory([Gpu("n1", 0, 16 * GIB, used_by_others_bytes=8 * GIB)])
    row = r.snapshot()[0]
    assert row["reserved"] == 10 * GIB and row["free"] == 0 and row["holders"] == {"a": 10 * GIB}
    assert "largest free block is 0 B (node n1 GPU 0)" in refusal(r, "b", Need(1))
    r.release("a")
    assert r.reserve("b", Need(8 * GIB)).gpu_index == 0
    refusal(r, "c", Need(1))


def test_a_gpu_leaving_reports_its_reservations_as_lost():
    r = Reservations(
        [Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 16 * GIB)], {"n1": 8 * GIB, "n2": 9 * GIB}
    )
    a = r.reserve("a", Need(10 * GIB))
    b = r.reserve("b", Need(10 * GIB))
    c = r.reserve("c", Need(ram_bytes=GIB))
    assert c.node_id == "n2" and r.lost() == {}
    r.update_inventory([Gpu("n1", 0, 16 * GIB)], {"n1": 8 * GIB})
    assert r.lost() == {"b": b, "c": c} and set(r.held()) == {"a", "b", "c"}
    assert [row["node"] for row in r.snapshot()] == ["n1"]
    refusal(r, "d", Need(10 * GIB))
    r.update_inventory(
        [Gpu("n1", 0, 16 * GIB), Gpu("n2", 0, 16 * GIB)], {"n1": 8 * GIB, "n2": 8 * GIB}
    )
    assert r.lost() == {}  # it came back: counted again
    refusal(r, "d", Need(10 * GIB))
    r.release("b")
    assert r.reserve("d", Need(10 * GIB)) == Placement("n2", 0, 10 * GIB, 0)
    assert a.node_id == "n1"


# -- concurrency property ---------------------------------------------------------------------


def test_random_concurrent_reserve_release_never_overcommits():
    gpus = [
        Gpu("n1", 0, 16 * GIB, 2 * GIB),
        Gpu("n1", 1, 16 * GIB),
        Gpu("n2", 0, 24 * GIB, GIB),
        Gpu("n2", 1, 8 * GIB),
    ]
    ram = {"n1": 32 * GIB, "n2": 48 * GIB}
    r = Reservations(gpus, ram)
    by_key = {(g.node_id, g.index): g for g in gpus}
    ops_per_thread, threads, errors, violations = 250, 8, [], []
    outcomes = {"placed": 0, "refused": 0}

    def check():
        for row in r.snapshot():
            gpu = by_key[(row["node"], row["index"])]
            if row["reserved"] > gpu.total_bytes - gpu.used_by_others_bytes:
                violations.append(row)
        for row in r.ram_snapshot():
            if row["reserved"] > ram[row["node"]]:
                violations.append(row)

    def worker(seed):
        rng = random.Random(seed)
        mine = []
        for i in range(ops_per_thread):
            try:
                if mine and rng.random() < 0.45:
                    r.release(mine.pop(rng.randrange(len(mine))))
                    if rng.random() < 0.2:
                        r.release(f"t{seed}-gone")
                else:
                    name = f"{{name: t{seed} version: {i}}}"
                    vram = 0 if rng.random() < 0.2 else rng.randrange(1, 12 * GIB)
                    need = Need(vram, rng.choice([0, rng.randrange(1, 8 * GIB)]))
                    if isinstance(r.reserve(name, need), Refusal):
                        outcomes["refused"] += 1
                    else:
                        mine.append(name)
                        outcomes["placed"] += 1
            except Exception as err:  # noqa: BLE001 - anything else is a failure
                errors.append(err)
            check()

    pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == [] and violations == []
    assert outcomes["placed"] > 100 and outcomes["refused"] > 100  # both paths exercised
    held = r.held()
    assert sum(row["reserved"] for row in r.snapshot()) == sum(p.vram_bytes for p in held.values())
    for name in held:
        r.release(name)
    assert all(row["reserved"] == 0 for row in r.snapshot() + r.ram_snapshot())


# -- estimate and sizes -----------------------------------------------------------------------


def test_vram_estimate_rule_and_monotonicity():
    assert (VRAM_FACTOR, VRAM_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES) == (2.0, 256 * MIB, GIB)
    assert estimate_vram_bytes(0) == GIB + 256 * MIB
    assert estimate_vram_bytes(GIB) == 3 * GIB + 256 * MIB
    assert estimate_vram_bytes(3, factor=1.5, workspace_bytes=0) == 5
    values = [estimate_vram_bytes(n) for n in range(0, 10 * GIB, 37 * MIB)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        estimate_vram_bytes(-1)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("16GiB", 16 * GIB),
        ("512MiB", 512 * MIB),
        ("1.5GB", 1_500_000_000),
        ("1000", 1000),
        ("0", 0),
        ("2 GiB", 2 * GIB),
        ("16gib", 16 * GIB),
        ("4Gi", 4 * GIB),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("3M", 3_000_000),
        ("1TiB", 1024**4),
        ("10B", 10),
        (" 7 ", 7),
        ("0.5GiB", GIB // 2),
        (".5KiB", 512),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "invalid size"),
        ("GiB", "invalid size"),
        ("-1GiB", "invalid size"),
        ("16 GiBs", "unknown unit"),
        ("1.2.3GB", "invalid size"),
        ("16 PiB", "unknown unit"),
        ("1e9", "invalid size"),
        (16, "must be a string"),
    ],
)
def test_parse_bytes_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_bytes(text)


def test_need_rejects_negative_and_format_bytes():
    with pytest.raises(ValueError):
        Need(-1)
    assert [format_bytes(n) for n in (0, 100, 2048, 3 * MIB, 10 * GIB)] == [
        "0 B",
        "100 B",
        "2.0 KiB",
        "3.0 MiB",
        "10.0 GiB",
    ]


# -- replica_need: what one replica reserves ---------------------------------------------------


def test_replica_need_on_cpu_reserves_ram_only():
    assert replica_need("cpu", variable_bytes=10 * GIB, ram_estimate_bytes=123) == Need(0, 123)


def test_replica_need_on_gpu_estimates_from_variables():
    need = replica_need("gpu", variable_bytes=GIB, ram_estimate_bytes=5)
    assert need == Need(3 * GIB + 256 * MIB, 5)


def test_declared_sizes_win_over_estimates_and_measurements():
    need = replica_need(
        "gpu",
        variable_bytes=GIB,
        ram_estimate_bytes=5,
        declared_vram_bytes=10 * GIB,
        declared_ram_bytes=7,
        measured_vram_bytes=MIB,
    )
    assert need == Need(10 * GIB, 7)


def test_measured_peak_only_ever_lowers_the_estimate():
    estimate = estimate_vram_bytes(GIB)
    assert (
        replica_need(
            "gpu", variable_bytes=GIB, ram_estimate_bytes=0, measured_vram_bytes=GIB
        ).vram_bytes
        == GIB
    )
    assert (
        replica_need(
            "gpu", variable_bytes=GIB, ram_estimate_bytes=0, measured_vram_bytes=100 * GIB
        ).vram_bytes
        == estimate
    )


def test_replica_need_rejects_unknown_devices():
    with pytest.raises(ValueError, match="device must be one of"):
        replica_need("tpu", variable_bytes=0, ram_estimate_bytes=0)


def test_tensorflow_is_capped_to_the_reservation_less_the_cuda_context():
    from policies.admission import tf_memory_limit_bytes

    assert tf_memory_limit_bytes(10 * GIB) == 9 * GIB
    assert tf_memory_limit_bytes(estimate_vram_bytes(GIB)) == 2 * GIB + 256 * MIB
    assert tf_memory_limit_bytes(512 * MIB) == 256 * MIB  # never below TF's workspace


# -- --per_process_gpu_memory_fraction: a need sized per GPU ----------------------------------


def test_a_fraction_need_books_its_share_of_the_gpu_it_lands_on():
    r = Reservations([Gpu("n1", 0, 16 * GIB), Gpu("n1", 1, 40 * GIB)], {"n1": 64 * GIB})
    need = Need(2 * GIB, GIB, vram_fraction=0.5)  # the estimate (2 GiB) is not what is booked
    assert r.reserve(S % 1, need) == Placement("n1", 0, 8 * GIB, GIB)
    assert r.reserve(S % 2, need) == Placement("n1", 0, 8 * GIB, GIB)  # GPU 0 exactly full
    assert r.reserve(S % 3, need) == Placement("n1", 1, 20 * GIB, GIB)
    assert [row["reserved"] for row in r.snapshot()] == [16 * GIB, 20 * GIB]


def test_a_fraction_need_goes_where_it_leaves_the_least_room_after_its_own_share():
    # GPU 0 has less free memory (10 GiB) but would keep 5 after its 5 GiB share; GPU 1 has
    # 12 GiB free and keeps 2 after its 10 GiB share: best fit is GPU 1.
    r = Reservations([Gpu("n1", 0, 10 * GIB), Gpu("n1", 1, 20 * GIB, 8 * GIB)], {"n1": 64 * GIB})
    assert r.reserve(S % 1, Need(GIB, 0, 0.5)) == Placement("n1", 1, 10 * GIB, 0)


def test_two_fractions_of_0_4_fit_a_gpu_and_a_third_is_refused_naming_the_memory():
    r = book(16)
    need = Need(GIB, GIB, 0.4)
    share = fraction_vram_bytes(0.4, 16 * GIB)
    assert share == math.ceil(0.4 * 16 * GIB)
    for i in (1, 2):
        assert r.reserve(S % i, need) == Placement("n1", 0, share, GIB)
    message = refusal(r, S % 3, need, "gpu_memory")
    assert message == (
        f"Insufficient resources to load servable {S % 3}; needs {format_bytes(share)} of GPU "
        "memory (0.4 of GPU 0's 16.0 GiB, --per_process_gpu_memory_fraction), largest free "
        f"block is {format_bytes(16 * GIB - 2 * share)} (node n1 GPU 0)"
    )
    assert format_bytes(share) == "6.4 GiB" and format_bytes(16 * GIB - 2 * share) == "3.2 GiB"


def test_a_fraction_need_without_gpus_is_refused_naming_the_fraction():
    r = Reservations([], {"n1": 64 * GIB})
    assert refusal(r, S % 1, Need(GIB, 0, 0.25), "no_gpus").endswith(
        "needs 0.25 of a GPU's memory (--per_process_gpu_memory_fraction), no GPUs are known"
    )


def test_a_fraction_above_one_books_the_whole_gpu_and_never_more():
    assert Need(0, 0, 1.5).vram_on(Gpu("n1", 0, 16 * GIB)) == 16 * GIB
    assert Need(5, 0).vram_on(Gpu("n1", 0, 16 * GIB)) == 5  # no fraction: the bytes
    with pytest.raises(ValueError, match="cannot be negative"):
        Need(0, 0, -0.1)


def test_replica_need_takes_the_fraction_on_gpus_only_and_declared_vram_wins():
    estimate = estimate_vram_bytes(GIB)
    gpu = replica_need("gpu", variable_bytes=GIB, ram_estimate_bytes=5, gpu_memory_fraction=0.4)
    assert gpu == Need(estimate, 5, 0.4)
    cpu = replica_need("cpu", variable_bytes=GIB, ram_estimate_bytes=5, gpu_memory_fraction=0.4)
    assert cpu == Need(0, 5) and not cpu.gpu
    declared = replica_need(
        "gpu",
        variable_bytes=GIB,
        ram_estimate_bytes=5,
        declared_vram_bytes=3 * GIB,
        gpu_memory_fraction=0.4,
    )
    assert declared == Need(3 * GIB, 5)


def test_a_shared_host_books_its_block_and_a_fraction_need_takes_its_estimate_inside():
    r = book(16)
    hosts = HostBook(r, lambda device: Need(8 * GIB, 4 * GIB))
    slot = hosts.admit(S % 1, Need(2 * GIB, GIB, 0.4), "gpu")
    assert isinstance(slot, HostSlot) and slot.placement is not None
    assert slot.placement.vram_bytes == 8 * GIB  # --shared_host_vram, not 0.4 x 16 GiB
    [host] = hosts.snapshot()
    assert host["used_vram_bytes"] == 2 * GIB - CUDA_CONTEXT_BYTES  # the estimate, in the block
