"""The serving map's publisher on a fake clock: the restart grace, router leases, acknowledgements
and the stored epoch ceiling, with no real wait longer than a condition's timeout."""

import json
import threading

from cluster.publisher import EPOCH_BLOCK, Publisher, router_grace_s
from tests.support.fake_time import FakeTime


class Store:
    def __init__(self):
        self.writes = []

    def put(self, key, value):
        self.writes.append((key, json.loads(value)))


def publisher(time, **kw):
    kw.setdefault("ack_timeout_s", 0.05)
    return Publisher(
        threading.Condition(threading.RLock()), clock=time.clock, sleep=time.sleep, **kw
    )


def test_the_grace_follows_the_poll_period():
    assert router_grace_s(5.0) == 7.0 and router_grace_s(1.0) == 3.0
    assert Publisher(threading.Condition(), poll_s=1.0).grace_s == 3.0
    assert Publisher(threading.Condition(), poll_s=1.0, grace_s=0.5).grace_s == 0.5


def test_a_restarted_publisher_waits_out_the_grace_once_on_the_injected_sleeper():
    time, store = FakeTime(1000.0), Store()
    p = publisher(time, store=store, ceiling_key="k", poll_s=5.0)
    p.wait_for_routers(p.epoch)  # a fresh start knows every router: no grace
    assert time.slept == []
    p.continue_from(1000)
    assert p.epoch == 1001 and store.writes == [("k", 1001 + EPOCH_BLOCK)]
    p.wait_for_routers(p.epoch)
    assert time.slept == [7.0]  # the whole grace, waited on the fake clock
    p.wait_for_routers(p.epoch)
    assert time.slept == [7.0]  # and only once


def test_only_routers_seen_within_the_lease_are_waited_for():
    time = FakeTime(1000.0)
    p = publisher(time, lease_s=30.0)
    p.publish()
    assert p.wait_for_newer(0, "router-a", timeout_s=0)  # acknowledges epoch 0, sees epoch 1
    time.now += 31  # router-a's lease ran out: it is gone
    p.publish()
    p.wait_for_routers(p.epoch)  # returns at once: nobody live is behind
    assert time.slept == []


def test_a_live_router_behind_is_waited_for_until_it_acknowledges():
    time = FakeTime(1000.0)
    p = publisher(time, ack_timeout_s=30.0)
    p.wait_for_newer(0, "router-a", timeout_s=0)  # router-a holds epoch 0
    p.publish()
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (p.wait_for_routers(p.epoch), done.set()))
    waiter.start()
    assert not done.wait(0.2)  # still waiting for router-a
    p.wait_for_newer(1, "router-a", timeout_s=0)  # router-a applies epoch 1
    assert done.wait(5)
    waiter.join(5)


def test_a_long_poll_returns_false_without_a_newer_epoch_and_true_with_one():
    p = publisher(FakeTime(1000.0))
    assert not p.wait_for_newer(0, "r", timeout_s=0.01)
    threading.Timer(0.05, p.publish).start()
    assert p.wait_for_newer(0, "r", timeout_s=5)


def test_the_ceiling_is_written_once_per_block_and_retried_after_a_failed_write():
    class Flaky(Store):
        fail = True

        def put(self, key, value):
            if self.fail:
                self.fail = False
                raise OSError("GCS unavailable")
            super().put(key, value)

    store = Flaky()
    p = publisher(FakeTime(1000.0), store=store)
    p.publish()  # the write fails: epoch 1 is still published, the ceiling retried next time
    assert p.epoch == 1 and store.writes == []
    for _ in range(EPOCH_BLOCK):
        p.publish()
    assert [c for _, c in store.writes] == [2 + EPOCH_BLOCK]  # one write covered the block
