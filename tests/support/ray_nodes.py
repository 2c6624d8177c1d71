"""Ray nodes of a real multi-node cluster on one machine, for the integration tests.

`RayNode` runs `ray start ... --block` in its own session, each node on its own loopback address,
as Ray's own multi-node tests do; `stop()` SIGKILLs the whole session (raylet, GCS on a head,
workers, and the Aspire actors and replicas running on the node) and never another Ray on this
machine. `listening_pids(port)` says which processes hold a listening socket on a TCP port (a
node's routers, which share the REST port with SO_REUSEPORT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


class RayNode:
    def __init__(self, *args: str, env: dict | None = None):
        env = {**os.environ, "RAY_AUTH_MODE": "token", **(env or {})}  # token: Ray 2.60's default
        self.args = args
        self.proc = subprocess.Popen(
            [RAY, "start", *args, "--disable-usage-stats", "--block"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # until Ray says it runs (or the command ends)
            self.lines.append(line)
            if "Ray runtime started" in line:
                break
        assert self.proc.poll() is None, "".join(self.lines[-30:])
        threading.Thread(
            target=lambda: [self.lines.append(line) for line in self.proc.stdout], daemon=True
        ).start()

    def pids(self) -> set[int]:
        """Every live process of the node's session (zombies left out)."""
        sid = self.proc.pid
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) != sid:
                        continue
                    with open(f"/proc/{entry}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.add(int(entry))
                except (OSError, IndexError):
                    continue
        return found

    def stop(self) -> None:
        """SIGKILL every process of the node's session (its process group, and any process
        that left the group but not the session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        # gone, not just signalled: `ray start --head` refuses an address whose GCS still runs
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)


def listening_pids(port: int) -> set[int]:
    """Pids of the processes holding a TCP socket that listens on `port` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pids.add(int(entry))
                    break
        except OSError:
            continue
    return pids
