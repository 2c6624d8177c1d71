"""What `aspire serve` prints, and where everything else goes.

Contract:
- The terminal (stderr) shows Aspire's own lines (`aspire.*` loggers, at `--log_level` and
  above) and errors from anyone; `--log_format=json` writes one JSON object a line (`time`,
  `level`, `logger`, `message`, and `model`, `version`, `event`, `duration_s` where the line
  is about one servable version) for log shippers. No colour codes, ever.
- Everything else the CLI process logs (Ray's and Serve's driver lines) goes to
  `aspire-cli.log` in Ray's session log directory, beside the logs of Ray's own processes; the
  CLI prints that directory once. Lines logged before Ray has a session are kept and written
  there once it has one.
- The manager actor runs in another process; Ray does not forward workers' output to the
  terminal (`log_to_driver=False`: TF's and Ray's noise stays in their files). The manager
  keeps its `aspire.*` records in an `EventLog` and the CLI follows it (`EventFollower`), so
  its lines (loads, unloads, refusals, retries, progress) reach the terminal as the CLI's own.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import sys
import threading
from typing import Callable

# Extra fields a log call may carry (`log.info(..., extra=servable_fields(...))`); both formats
# show them, the JSON one as keys.
FIELDS = ("model", "version", "event", "duration_s")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def servable_fields(model: str, version: int, event: str, duration_s: float | None = None):
    """`extra=` of a log call about one servable version."""
    fields: dict = {"model": model, "version": version, "event": event}
    if duration_s is not None:
        fields["duration_s"] = round(duration_s, 3)
    return fields


def record_doc(record: logging.LogRecord) -> dict:
    """A log record as the JSON-able document both the EventLog and the JSON format use."""
    doc = {
        "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
    }
    for key in FIELDS:
        value = getattr(record, key, None)
        if value is not None:
            doc[key] = value
    if record.exc_info:
        doc["exception"] = logging.Formatter().formatException(record.exc_info)
    return doc


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(getattr(record, "doc", None) or record_doc(record))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def _is_aspire(record: logging.LogRecord) -> bool:
    return record.name == "aspire" or record.name.startswith("aspire.")


class _Terminal(logging.Filter):
    """Aspire's lines at the chosen level, and errors from anyone."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_aspire(record):
            return record.levelno >= self.level
        return record.levelno >= logging.ERROR


class _Elsewhere(logging.Handler):
    """What the terminal does not show: kept in memory until `to_file` names the file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._held: list[logging.LogRecord] = []
        self._file: logging.Handler | None = None
        self.addFilter(lambda r: not _is_aspire(r))

    def to_file(self, path: str) -> None:
        handler = logging.FileHandler(path)
        handler.setFormatter(TextFormatter())
        self.acquire()  # the handler's own lock (Handler.lock, created in __init__)
        try:
            for record in self._held:
                handler.handle(record)
            self._held, self._file = [], handler
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is not None:
            self._file.handle(record)
        elif len(self._held) < 10000:
            self._held.append(record)


class CliLogging:
    """The CLI's logging: `setup()` before anything logs, `session_started(dir)` once Ray runs."""

    def __init__(self, level: str = "INFO", log_format: str = "text"):
        self.level = getattr(logging, level)
        self.format = log_format
        self.terminal = logging.StreamHandler(sys.stderr)
        self.terminal.setFormatter(formatter(log_format))
        self.terminal.addFilter(_Terminal(self.level))
        self.elsewhere = _Elsewhere()

    def setup(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(self.terminal)
        root.addHandler(self.elsewhere)
        root.setLevel(logging.DEBUG if self.level <= logging.DEBUG else logging.INFO)
        logging.getLogger("aspire").setLevel(self.level)
        self.quiet_libraries()

    def quiet_libraries(self) -> None:
        """Route Ray's and Serve's driver loggers, which bring their own stream handlers, to the
        root's handlers (so to the file, and errors to the terminal)."""
        for name in ("ray", "ray.serve", "ray.data", "ray.train", "ray.tune"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler
                ):
                    logger.removeHandler(handler)
            logger.propagate = True

    def session_started(self, log_dir: str) -> str:
        path = f"{log_dir}/aspire-cli.log"
        self.quiet_libraries()
        self.elsewhere.to_file(path)
        return path

    def show(self, doc: dict) -> None:
        """Print a record another process sent (the manager's EventLog)."""
        level = logging.getLevelName(doc.get("level", "INFO"))
        record = logging.LogRecord(
            doc.get("logger", "aspire"), level, "", 0, doc.get("message", ""), None, None
        )
        record.created = datetime.datetime.fromisoformat(doc["time"]).timestamp()
        record.msecs = (record.created % 1) * 1000
        record.doc = doc  # the JSON format prints it as it came
        for key in FIELDS:
            if key in doc:
                setattr(record, key, doc[key])
        if doc.get("exception"):
            record.msg = f"{record.msg}\n{doc['exception']}"
        self.terminal.handle(record)


class EventLog(logging.Handler):
    """The manager's `aspire.*` records, numbered, the newest `capacity` kept, for followers."""

    def __init__(self, capacity: int = 10000):
        super().__init__(logging.DEBUG)
        self._docs: collections.deque[tuple[int, dict]] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        doc = record_doc(record)
        with self._changed:
            self._seq += 1
            self._docs.append((self._seq, doc))
            self._changed.notify_all()

    def since(self, seq: int, timeout_s: float) -> tuple[int, list[dict]]:
        """(the newest number, the records numbered above `seq`), waiting up to `timeout_s`
        for one when there is none yet."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seq, timeout=timeout_s)
            return self._seq, [doc for n, doc in self._docs if n > seq]


class EventFollower:
    """Follows a manager's EventLog (`fetch(seq, timeout_s)` -> (seq, docs)) on a thread and
    hands each record to `show`, in order. `drain()` fetches what is left, once, at once."""

    def __init__(self, fetch: Callable[[int, float], tuple[int, list[dict]]], show):
        self._fetch, self._show = fetch, show
        self._seq = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="aspire-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _poll(self, timeout_s: float) -> None:
        with self._lock:
            seq, docs = self._fetch(self._seq, timeout_s)
            if seq < self._seq:  # a restarted manager numbers from 0 again
                seq, docs = self._fetch(0, 0.0)
            for doc in docs:
                self._show(doc)
            self._seq = seq

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(0.2)  # short: catch_up() waits for the lock
            except Exception:  # the manager restarting or gone: try again, or stop
                if self._stop.wait(0.5):
                    return

    def catch_up(self) -> None:
        """Show what the manager logged so far, now (before a line that must come after it)."""
        try:
            self._poll(0.0)
        except Exception:
            pass

    def drain(self) -> None:
        self._stop.set()
        try:
            self._poll(0.0)
        except Exception:
            pass
