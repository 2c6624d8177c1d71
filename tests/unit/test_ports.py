"""Server ports for tests and the bench come from below the kernel's ephemeral range, where no
process asking for "any port" can be given them between the check and the server's bind."""

import socket

import pytest

from tests.support.ports import LOW, ephemeral_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_are_distinct_and_bindable():
    first_ephemeral = ephemeral_range()[0]
    if first_ephemeral - LOW < 1000:
        pytest.skip(
            f"ephemeral range starts at {first_ephemeral}: "
            "free_port() falls back to the kernel's choice"
        )
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        assert LOW <= port < first_ephemeral
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
