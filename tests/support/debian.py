"""Install a Debian package with apt-get (as root) when a test or benchmark first needs it.

Used by tests/support/prometheus.py (Debian's `prometheus`), tests/support/redis.py (Debian's
`redis-server`) and bench/suite.py (Debian's `wrk`).
Concurrent callers serialise on a flock in /tmp; stale package lists are refreshed once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Callable

# apt-get output that means "the package lists are missing or stale": run `apt-get update`, retry
NEEDS_UPDATE = re.compile(
    r"Unable to locate package|has no installation candidate|Failed to fetch"
    r"|404\s+Not Found|is not available, but is referred to",
    re.I,
)
APT_LOCKED = re.compile(r"Could not get lock|Unable to acquire the dpkg frontend lock", re.I)


def apt(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="l")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args]
    for attempt in range(5):
        try:
            done = subprocess.run(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"`{' '.join(cmd)}` did not finish in {timeout_s:.0f} s") from e
        if done.returncode == 0 or not APT_LOCKED.search(done.stderr + done.stdout) or attempt == 4:
            return done
        time.sleep(5)  # another apt/dpkg holds a lock that DPkg::Lock::Timeout does not cover
    return done


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def apt_install(package: str, deadline: float) -> None:
    """`apt-get install --no-install-recommends PACKAGE`, refreshing the lists once if they are
    stale. RuntimeError with apt-get's output when it fails, or when this is not root on Debian."""
    hint = f"install it with `apt-get install --no-install-recommends {package}`"
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{package} is not installed and there is no apt-get here; {hint}")
    if os.geteuid() != 0:
        raise RuntimeError(f"{package} is not installed and installing it needs root; {hint}")
    install = ["install", "-y", "--no-install-recommends", package]
    left = lambda: max(60.0, deadline - time.monotonic())  # noqa: E731
    done = apt(install, left())
    if done.returncode != 0 and NEEDS_UPDATE.search(done.stdout + done.stderr):
        update = apt(["update"], left())
        if update.returncode != 0:
            raise RuntimeError(
                f"`apt-get update` failed while installing {package}:\n"
                + tail(update.stdout + update.stderr)
            )
        done = apt(install, left())
    if done.returncode != 0:
        raise RuntimeError(
            f"`apt-get install {package}` failed (exit {done.returncode}):\n"
            + tail(done.stdout + done.stderr)
        )


POLICY_RC_D = "/usr/sbin/policy-rc.d"


def installed_binary(name: str, debian_path: str) -> str | None:
    """`name` on the PATH, else the Debian package's `debian_path` if it is executable."""
    path = shutil.which(name)
    if path:
        return path
    if os.path.isfile(debian_path) and os.access(debian_path, os.X_OK):
        return debian_path
    return None


def apt_install_without_service(package: str, deadline: float) -> None:
    """`apt_install(package)` with the package's service kept from starting during the install
    (a temporary policy-rc.d that says `exit 101`, where the machine has none): the tests start
    their own servers on ports of their own."""
    own_policy = os.geteuid() == 0 and not os.path.exists(POLICY_RC_D)
    if own_policy:  # keep invoke-rc.d (sysvinit or systemd) from starting the packaged service
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# temporary, written by tests/support/debian.py\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
    try:
        apt_install(package, deadline)
    finally:
        if own_policy:
            try:
                os.unlink(POLICY_RC_D)
            except FileNotFoundError:
                pass


def ensure_binary(
    package: str,
    find: Callable[[], str | None],
    install: Callable[[float], None],
    timeout_s: float = 900.0,
) -> str:
    """The path `find()` returns, after `install(deadline)` under a per-package flock if it
    returned None. Raises RuntimeError if the binary is still missing afterwards."""
    path = find()
    if path:
        return path
    deadline = time.monotonic() + timeout_s
    lock_path = os.path.join(tempfile.gettempdir(), f"aspire-{package}-install.lock")
    with open(lock_path, "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"timed out waiting for {lock_path} "
                        f"(another process is installing {package})"
                    ) from None
                time.sleep(0.5)
        try:
            path = find()  # installed by whoever held the lock before us
            if not path:
                install(deadline)
                path = find()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not path:
        raise RuntimeError(f"apt-get installed {package} but its binary was not found")
    return path
