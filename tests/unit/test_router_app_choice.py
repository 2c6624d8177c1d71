"""Which application of a version a router sends a call to (deployments/router/core.py
`RouterCore._app`), without Ray: stand-in applications that say whether they have a replica the
router can call."""

from core.contracts import VersionAddress
from deployments.router.core import RouterCore


class App:
    def __init__(self, usable: bool = True):
        self._usable = usable

    def usable(self) -> bool:
        return self._usable


def core_with(apps: dict) -> RouterCore:
    core = RouterCore.__new__(RouterCore)  # only `_apps` is read by `_app`
    core._apps = apps
    return core


ADDRESS = VersionAddress((("m-1", 1), ("m-1-p1", 1)))


def test_calls_avoid_an_application_whose_replicas_all_failed():
    apps = {"m-1": App(usable=False), "m-1-p1": App()}  # m-1's node died
    core = core_with(apps)
    assert {id(core._app(ADDRESS)) for _ in range(50)} == {id(apps["m-1-p1"])}


def test_a_retry_goes_to_another_application_than_the_one_that_lost_its_replica():
    apps = {"m-1": App(), "m-1-p1": App()}
    core = core_with(apps)
    assert {id(core._app(ADDRESS, apps["m-1"])) for _ in range(50)} == {id(apps["m-1-p1"])}


def test_with_no_application_usable_calls_still_go_by_replica_count():
    apps = {"m-1": App(usable=False), "m-1-p1": App(usable=False)}
    core = core_with(apps)
    assert {id(core._app(ADDRESS)) for _ in range(200)} == {id(a) for a in apps.values()}
