"""A real Redis server behind Ray's GCS (GCS fault tolerance), for the integration tests.

`ensure_redis()` installs Debian's `redis-server` (apt-get, as root) the first time it is needed,
with its packaged service kept from starting (tests/support/debian.py). `RedisServer` runs one on
a free loopback port in a directory of its own, with the persistence settings
docs/operations.md recommends (append-only file, fsync every second), and stops it with the
test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.support.debian import apt_install_without_service, ensure_binary, installed_binary
from tests.support.ports import free_port

PACKAGE = "redis-server"
DEBIAN_BINARY = "/usr/bin/redis-server"


def _find_binary() -> str | None:
    return installed_binary("redis-server", DEBIAN_BINARY)


def ensure_redis(timeout_s: float = 900.0) -> str:
    """The path of redis-server, installing Debian's package first if it is missing."""
    return ensure_binary(PACKAGE, _find_binary, _install, timeout_s)


def _install(deadline: float) -> None:
    apt_install_without_service(PACKAGE, deadline)
    # should the packaged service run anyway (a systemd that ignores the veto): ours never uses
    # its port, so stopping it is only hygiene
    subprocess.run(
        ["sh", "-c", "command -v systemctl >/dev/null && systemctl disable --now redis-server"],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


class RedisServer:
    """redis-server on 127.0.0.1:`port` with its data in `directory`; `address` is what
    RAY_REDIS_ADDRESS takes."""

    def __init__(self, directory: str, timeout_s: float = 30.0):
        binary = ensure_redis()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        os.makedirs(directory, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.address}:\n{out[-3000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
