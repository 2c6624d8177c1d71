"""The manager's load threads: where its actions (loads, unloads, moves, clean-ups) run.

`LoadThreads.submit(fn, *args)` runs `fn(*args)` once, on one of at most `count` threads, calls
starting in the order they were submitted, as a ThreadPoolExecutor of `count` workers does. What
differs is the cost of a submission: calls wait in a deque, and each pool worker runs a drain
loop that takes them one after the other, so a reconcile pass that starts 10,000 actions pays
one deque append for each instead of a Future with its lock and condition (the manager wants no
result: each call reports its own failures).

Guarantees:
1. Every call submitted before `shutdown` has started, ends before `shutdown` returns; the calls
   still waiting are dropped.
2. A call that raises is logged; the threads go on with the next one.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger("aspire.manager")


class LoadThreads:
    def __init__(self, count: int, thread_name_prefix: str = "aspire-load"):
        self._count = max(1, count)
        self._pool = ThreadPoolExecutor(self._count, thread_name_prefix=thread_name_prefix)
        self._calls: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._draining = 0  # drain loops submitted to the pool and not ended
        self._closed = False
        self._lock = threading.Lock()  # over the three above together; calls nothing

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on a load thread, after every call submitted before it has started.
        Raises RuntimeError once `shutdown` was called (as ThreadPoolExecutor does)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run calls after shutdown")
            self._calls.append((fn, args))
            if self._draining >= self._count:  # a drain loop that has not ended takes it
                return
            self._draining += 1
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        """Run the waiting calls, one at a time, until none is left."""
        while True:
            with self._lock:
                if not self._calls:
                    self._draining -= 1
                    return
                fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("a call on a load thread failed unexpectedly")

    def shutdown(self) -> None:
        """Drop the calls still waiting and return once the running ones ended."""
        with self._lock:
            self._closed = True
            self._calls.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
