"""Give back the resident pages of shared-library code a process touched once and may not need.

Importing TensorFlow runs the static initialisers of `libtensorflow_cc.so` (op and kernel
registrations spread over the whole library), so a version replica starts with about 250 MiB of
TF's machine code resident, though serving one model uses a small part of it. Those pages are
clean and file-backed: the kernel can re-read them from the page cache (or the file) on the
next use. `drop_clean_code_pages()` asks the kernel (madvise MADV_DONTNEED) to drop them from
this process; the pages a request needs fault back in on first use, from the page cache, which
the node's other replicas share.

Only mappings that are executable and not writable (`r-xp`) and hold no private dirty page are
touched: their contents are exactly the file's, so dropping them loses nothing. Data, heap,
relocated (RELRO) and anonymous memory are never touched. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import sys

MADV_DONTNEED = 4
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def clean_code_mappings(smaps: str) -> list[tuple[int, int, str]]:
    """(start, end, path) of every file-backed `r-xp` mapping with no private dirty page, from
    the text of /proc/PID/smaps."""
    found, current = [], None
    for line in smaps.splitlines():
        mapping = _MAPPING.match(line)
        if mapping:
            current = mapping
            continue
        if line.startswith("Private_Dirty:") and current is not None:
            start, end, perms, path = current.groups()
            if perms == "r-xp" and path.startswith("/") and int(line.split()[1]) == 0:
                found.append((int(start, 16), int(end, 16), path))
            current = None
    return found


def drop_clean_code_pages() -> int:
    """Drop this process's resident pages of clean shared-library code; returns the bytes of
    the mappings dropped (not all of them were resident). 0 where this is not Linux."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/smaps") as f:
        mappings = clean_code_mappings(f.read())
    dropped = 0
    for start, end, _path in mappings:
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
    return dropped


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim(0)), after a shared
    host unloaded a version: freed session memory otherwise stays in the process's resident set,
    the TF Serving complaint that unloading returns nothing. False where glibc is not used."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
