"""A real Prometheus server on loopback, for integration tests.

    from tests.support.prometheus import PrometheusServer

    with PrometheusServer(
        ["127.0.0.1:8501"], metrics_path="/monitoring/prometheus/metrics"
    ) as prom:
        prom.wait_for_scrapes(n=2)
        prom.query('sum(rate(some_counter_total[30s]))')

`ensure_prometheus()` installs Debian's `prometheus` package (apt-get, as root) the first time it
is needed, with the package's own service kept from starting. Every `PrometheusServer` runs its own
binary as a child process on 127.0.0.1 and a free port picked at start (never 9090), with its
config and TSDB in a fresh temp dir that `stop()` removes. Only the standard library and
`requests` are used.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable

import requests

from tests.support.debian import apt_install_without_service, ensure_binary, installed_binary, tail
from tests.support.ports import free_port

PACKAGE = "prometheus"
DEBIAN_BINARY = "/usr/bin/prometheus"
DEFAULT_PORT = 9090  # the Debian service's port: ours never uses it


class PrometheusError(RuntimeError):
    """Prometheus answered an API call with `status != "success"`; the message is its own text."""

    def __init__(self, message: str, error_type: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.error_type, self.status_code = error_type, status_code


# --------------------------------------------------------------------------------------- install


def _find_binary() -> str | None:
    return installed_binary("prometheus", DEBIAN_BINARY)


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _stop_packaged_service() -> None:
    """Stop the Debian service in case the package started it anyway (no policy-rc.d veto, or a
    systemd that ignores it). Our own servers never use its port, so this is only hygiene."""
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(
            ["systemctl", "disable", "--now", "prometheus"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    elif os.path.exists("/etc/init.d/prometheus"):
        subprocess.run(
            ["/etc/init.d/prometheus", "stop"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )


def ensure_prometheus(timeout_s: float = 900.0) -> str:
    """The path of the prometheus binary, installing Debian's package first if it is missing.

    Concurrent callers serialise on a flock in /tmp (tests/support/debian.py). The package's
    service is kept from starting during the install with a temporary policy-rc.d (`exit 101`)
    where the machine has none; should it run anyway, it is stopped afterwards. Raises
    RuntimeError with apt-get's output when the package cannot be installed.
    """
    return ensure_binary(PACKAGE, _find_binary, _install, timeout_s)


def _install(deadline: float) -> None:
    service_was_up = _listening(DEFAULT_PORT)
    apt_install_without_service(PACKAGE, deadline)
    if not service_was_up and _listening(DEFAULT_PORT):
        _stop_packaged_service()


def prometheus_version(binary: str | None = None) -> str:
    """The version string of the binary, e.g. "2.42.0+ds"."""
    out = subprocess.run(
        [binary or ensure_prometheus(), "--version"], capture_output=True, text=True, timeout=30
    )
    m = re.search(r"prometheus, version (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else (out.stdout + out.stderr).strip()


# ---------------------------------------------------------------------------------------- server

_live: set["PrometheusServer"] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


DIR_PREFIX = "aspire-prometheus-"


def _sweep_stale_dirs() -> None:
    """Remove temp dirs left by test processes that were killed outright (no atexit ran)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(DIR_PREFIX) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, "owner.pid")) as f:
                owner = int(f.read().strip())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            pass  # no readable owner yet, or the owner is alive (or not ours): leave it


def _duration(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    if ms <= 0:
        raise ValueError(f"duration must be positive, got {seconds!r}")
    return f"{ms}ms"


def _timestamp(t: float | _dt.datetime | str) -> str:
    if isinstance(t, _dt.datetime):
        return f"{t.timestamp():.3f}"
    if isinstance(t, (int, float)):
        return f"{float(t):.3f}"
    return str(t)  # already RFC 3339 or a unix timestamp string


class PrometheusServer:
    """One Prometheus process on 127.0.0.1:<free port> scraping `targets` ("host:port" strings).

    Use as a context manager, or call start()/stop(). `url` is e.g. "http://127.0.0.1:41234".
    """

    READY_TIMEOUT_S = 60.0
    STOP_TIMEOUT_S = 10.0

    def __init__(
        self,
        targets: list[str],
        scrape_interval_s: float = 1.0,
        job: str = "aspire",
        metrics_path: str = "/metrics",
        extra_scrape_configs: list[dict] | None = None,
    ):
        self.targets_config = [self._target(t) for t in targets]
        self.scrape_interval_s = scrape_interval_s
        self.job, self.metrics_path = job, metrics_path
        self.extra_scrape_configs = list(extra_scrape_configs or [])
        self.binary: str | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.dir: str | None = None
        self.process: subprocess.Popen | None = None
        self._log = None
        self._session = requests.Session()
        self._session.trust_env = False  # never send loopback traffic through an HTTP(S)_PROXY

    @staticmethod
    def _target(target: str) -> str:
        if "://" in target:
            scheme, _, rest = target.partition("://")
            if scheme != "http" or "/" in rest.rstrip("/"):
                raise ValueError(
                    f"target {target!r}: give host:port (use metrics_path for the "
                    "path, extra_scrape_configs for anything else)"
                )
            target = rest.rstrip("/")
        return target

    # ------------------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def config_path(self) -> str | None:
        return os.path.join(self.dir, "prometheus.yml") if self.dir else None

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.dir, "prometheus.log") if self.dir else None

    def config(self) -> dict:
        interval = _duration(self.scrape_interval_s)
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets_config}],
                },
                *self.extra_scrape_configs,
            ],
        }

    def start(self) -> "PrometheusServer":
        if self.process is not None:
            raise RuntimeError("PrometheusServer already started")
        self.binary = ensure_prometheus()
        _sweep_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=DIR_PREFIX)
        with open(os.path.join(self.dir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        with _live_lock:
            _live.add(self)
        try:
            with open(self.config_path, "w") as f:
                json.dump(self.config(), f, indent=2)  # JSON is YAML: no yaml dependency
            for attempt in range(3):  # the free port can be taken between picking and binding
                self._spawn()
                try:
                    self._wait_ready()
                    return self
                except RuntimeError:
                    if (
                        attempt < 2
                        and self.process.poll() is not None
                        and "address already in use" in self.log_tail().lower()
                    ):
                        self._terminate()
                        continue
                    raise
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]
        # Backstop for a test process that dies without running atexit (SIGKILL): the kernel
        # kills Prometheus when its parent thread exits. Only from the main thread, which lives
        # as long as the process; setpriv avoids preexec_fn, unsafe in threaded processes.
        if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
            cmd = [shutil.which("setpriv"), "--pdeathsig", "KILL", "--", *cmd]
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"prometheus exited with code {code} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                r = self._session.get(f"{self.url}/-/ready", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text.strip()[:200]}"
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        raise RuntimeError(
            f"prometheus at {self.url} not ready after {self.READY_TIMEOUT_S:.0f} s "
            f"(last: {last}); log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's stdout+stderr (Prometheus logs to stderr)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                return tail(f.read().decode("utf-8", "replace"), lines)
        except (OSError, TypeError):
            return ""

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def stop(self) -> None:
        """Terminate the process (SIGKILL after 10 s) and remove the temp dir. Idempotent."""
        try:
            self._terminate()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            self._session.close()
            with _live_lock:
                _live.discard(self)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; atexit and the context manager are the real guarantees
        try:
            if self.process is not None:
                self.stop()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------------------- API
    def _api(self, path: str, params: dict | None = None, method: str = "GET") -> Any:
        if self.url is None or self.process is None:
            raise RuntimeError("PrometheusServer is not running")
        if method == "POST":
            r = self._session.post(f"{self.url}{path}", data=params, timeout=30)
        else:
            r = self._session.get(f"{self.url}{path}", params=params, timeout=30)
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(
                f"{path}: HTTP {r.status_code}, not JSON: {r.text[:500]}", status_code=r.status_code
            ) from None
        if body.get("status") != "success":
            error_type = body.get("errorType")
            raise PrometheusError(
                f"{path}: {error_type}: {body.get('error')}",
                error_type=error_type,
                status_code=r.status_code,
            )
        return body.get("data")

    def query(self, expr: str, time: float | _dt.datetime | str | None = None) -> list:
        """Instant query; returns `data.result` (for a vector: [{"metric": {...}, "value": [ts,
        "v"]}, ...]). Raises PrometheusError carrying Prometheus's error text."""
        params = {"query": expr}
        if time is not None:
            params["time"] = _timestamp(time)
        return self._api("/api/v1/query", params, method="POST")["result"]

    def query_range(
        self,
        expr: str,
        start: float | _dt.datetime | str,
        end: float | _dt.datetime | str,
        step: float | str,
    ) -> list:
        """Range query; returns `data.result` ([{"metric": {...}, "values": [[ts, "v"], ...]}])."""
        params = {
            "query": expr,
            "start": _timestamp(start),
            "end": _timestamp(end),
            "step": step if isinstance(step, str) else f"{float(step):g}",
        }
        return self._api("/api/v1/query_range", params, method="POST")["result"]

    def query_value(
        self, expr: str, time: float | _dt.datetime | str | None = None
    ) -> float | None:
        """The float value of an expression yielding one sample (or a scalar); None when empty."""
        result = self.query(expr, time)
        if not result:
            return None
        if isinstance(result[0], dict):
            if len(result) != 1:
                raise ValueError(f"{expr!r} returned {len(result)} series, expected one: {result}")
            return float(result[0]["value"][1])
        return float(result[1])  # scalar: [ts, "v"]

    def targets(self) -> list:
        """Active targets from /api/v1/targets (each with labels, scrapeUrl, health, lastError,
        lastScrape, ...)."""
        return self._api("/api/v1/targets", {"state": "active"})["activeTargets"]

    def wait_for_scrapes(self, n: int = 2, timeout_s: float = 30.0, poll_s: float = 0.2) -> list:
        """Wait until every configured target is active, every active target's health is "up",
        and each has been scraped successfully at least n times; returns the active targets.

        Successful scrapes are counted from Prometheus's own `up` series: each scrape writes one
        sample, 1 on success, so sum_over_time(up[...]) per target is the count since this fresh
        server started, however the polling interleaves with the scrapes."""
        deadline = time.monotonic() + timeout_s
        expected = len(self.targets_config)
        state = "no targets yet"
        while True:
            active = self.targets()
            ours = [t for t in active if t["labels"].get("job") == self.job]
            counts = {
                (s["metric"].get("job"), s["metric"].get("instance")): float(s["value"][1])
                for s in self.query("sum_over_time(up[1d])")
            }
            missing = [
                t
                for t in active
                if t.get("health") != "up"
                or counts.get((t["labels"].get("job"), t["labels"].get("instance")), 0) < n
            ]
            if len(ours) >= expected and active and not missing:
                return active
            state = (
                "; ".join(
                    f"{t['scrapeUrl']}: health={t.get('health')} scrapes_ok="
                    f"{counts.get((t['labels'].get('job'), t['labels'].get('instance')), 0):g}"
                    + (f" lastError={t['lastError']!r}" if t.get("lastError") else "")
                    for t in active
                )
                or "no active targets"
            )
            if len(ours) < expected:
                state += f" (job {self.job!r}: {len(ours)} of {expected} targets active)"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"targets not scraped successfully {n} times within {timeout_s:g} s: {state}"
                )
            time.sleep(poll_s)

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list], Any],
        timeout_s: float = 30.0,
        poll_s: float = 0.2,
    ) -> list:
        """Poll query(expr) until predicate(result) is truthy; returns that result. Query errors
        from Prometheus (e.g. a PromQL parse error) are raised at once; on timeout raises
        TimeoutError with the last result."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{expr!r} did not satisfy the predicate within {timeout_s:g} s; "
                    f"last result: {json.dumps(result)[:1000]}"
                )
            time.sleep(poll_s)
