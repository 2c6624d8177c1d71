"""`aspire status` with no Aspire to talk to answers at once: a clear line, exit code 1, and none
of Ray's connection warnings (Ray's own connect retries an unreachable address for minutes)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ASPIRE = str(Path(sys.executable).with_name("aspire"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("how", ["flag", "RAY_ADDRESS with --address=auto"])
def test_status_without_a_server_says_so_and_exits_1(how):
    address = f"127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if how == "flag":
        argv = [ASPIRE, "status", f"--address={address}"]
    else:
        argv, env["RAY_ADDRESS"] = [ASPIRE, "status", "--address=auto"], address
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    port = address.rsplit(":", 1)[1]
    assert "aspire status: no Aspire server found at " in r.stderr
    assert f":{port}: Connection refused" in r.stderr, r.stderr
    assert "Failed to connect to GCS" not in r.stderr and r.stdout == ""
