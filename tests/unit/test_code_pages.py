"""Dropping clean library code pages (deployments/replica/code_pages.py): only read-only,
executable, unmodified file mappings are chosen; a process that drops them after loading a
SavedModel answers exactly as before, with a smaller resident set."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.replica.code_pages import clean_code_mappings

ROOT = Path(__file__).resolve().parents[2]

SMAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 1 /lib/libtensorflow_cc.so.2
Rss:                1024 kB
Private_Dirty:         0 kB
7f0000100000-7f0000200000 r--p 00100000 08:01 1 /lib/libtensorflow_cc.so.2
Private_Dirty:       512 kB
7f0000200000-7f0000300000 rw-p 00200000 08:01 1 /lib/libtensorflow_cc.so.2
Private_Dirty:       100 kB
7f0000300000-7f0000400000 r-xp 00000000 08:01 2 /lib/patched.so
Private_Dirty:         4 kB
7f0000400000-7f0000500000 r-xp 00000000 00:00 0
Private_Dirty:         0 kB
7f0000500000-7f0000600000 rwxp 00000000 08:01 3 /lib/jit.so
Private_Dirty:         0 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
Private_Dirty:         0 kB
"""


def test_only_unmodified_read_only_code_of_files_is_chosen():
    assert clean_code_mappings(SMAPS) == [
        (0x7F0000000000, 0x7F0000100000, "/lib/libtensorflow_cc.so.2")
    ]


PROBE = """
import json, re, sys
import numpy as np
from deployments.replica.code_pages import drop_clean_code_pages
from deployments.replica.loader import SavedModelLoader

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

model = SavedModelLoader(sys.argv[1]).load()
x = {"x": np.array([1.0, 2.0, 5.0], np.float32)}
before, answer = rss(), model.run("serving_default", x)["y"].tolist()
dropped = drop_clean_code_pages()
after = rss()
again = [model.run("serving_default", x)["y"].tolist() for _ in range(200)]
print(json.dumps({"before": before, "after": after, "dropped": dropped, "answer": answer,
                  "again": again[-1], "final": rss()}))
"""


# a fresh interpreter, bounded at 300 s by subprocess.run: pytest-timeout's limit above it
@pytest.mark.timeout(360)
def test_a_process_that_dropped_its_code_pages_answers_the_same_with_less_resident():
    model = ROOT / "tests/data/saved_model_half_plus_two_cpu/00000123"
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(model)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["answer"] == got["again"] == [2.5, 3.0, 4.5]
    assert got["dropped"] > 0 and got["after"] < got["before"]
    mib = 2**20
    print(
        f"\nRSS after loading half_plus_two {got['before'] / mib:.0f} MiB, after dropping code "
        f"pages {got['after'] / mib:.0f} MiB, after 200 more predicts {got['final'] / mib:.0f} MiB"
    )
