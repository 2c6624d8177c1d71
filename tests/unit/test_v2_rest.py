"""The Open Inference Protocol's REST routes in the router (deployments/router/v2_rest.py),
without Ray: what the router itself refuses before a request reaches a replica."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.router import tfs_rest
from deployments.router.v2_rest import V2Rest


class FakeCore:
    """The router core's part the /v2 infer route uses; `calls` keeps what reached a replica."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def experiment_key(self, name):
        return None  # no sticky experiment here

    def resolve(self, name, version, label, key=None):
        return 1, "replica"

    async def call(self, address, method: str, payload: bytes) -> bytes:
        self.calls.append(payload)
        return b"\xff" * 8 + b"{}"  # V2_NO_BINARY, then an empty JSON answer

    async def infer(self, name, unversioned, version, address, method, payload) -> bytes:
        return await self.call(address, method, payload)  # no rollout here

    def record(self, seen, protocol, code, seconds) -> None:
        pass


def infer(header_length: bytes) -> tuple[int, dict, FakeCore]:
    core = FakeCore()

    async def read_body(scope, receive) -> bytes:
        return b"{}"

    routes = V2Rest(core, read_body, tfs_rest.header)  # type: ignore[arg-type]
    scope = {"headers": [(b"inference-header-content-length", header_length)]}
    status, _, body, _ = asyncio.run(routes.dispatch(scope, None, "POST", "/v2/models/m/infer"))
    return status, json.loads(body), core


@pytest.mark.parametrize(
    "declared, shown",
    [
        (b"9223372036854775808", "9223372036854775808"),  # 2**63: past the frame's int64
        (b"99999999999999999999", "99999999999999999999"),
        (b"\xb3", "\\xb3"),  # latin-1 superscript three: str.isdigit() is true for it
        (b"-1", "-1"),
        (b"1" + b"0" * 5000, "1" + "0" * 63 + "..."),  # past int()'s 4300-digit limit
    ],
)
def test_an_inference_header_length_not_ascii_digits_below_2_63_is_a_400_invalid_argument(
    declared, shown
):
    status, body, core = infer(declared)
    assert status == 400
    assert body == {"error": f"Inference-Header-Content-Length: {shown}"}
    assert core.calls == []


def test_the_largest_inference_header_length_reaches_the_replica_framed_as_int64():
    status, _, core = infer(b"9223372036854775807")
    assert status == 200
    assert core.calls == [b"\x7f" + b"\xff" * 7 + b"{}"]
