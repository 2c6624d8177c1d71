"""--per_process_gpu_memory_fraction end to end: `aspire serve --gpus=1x16GiB
--per_process_gpu_memory_fraction=0.4` on an embedded Ray with one logical GPU. Each GPU replica
books 0.4 of the GPU (6.4 GiB) whatever its estimate: two versions fit (12.8 GiB), a third is
refused with RESOURCE_EXHAUSTED naming the memory, and the two that serve keep serving."""

import re
import shutil
import subprocess

import pytest
import requests

from core.units import GIB
from policies.admission import fraction_vram_bytes
from tests.integration.conftest import ASPIRE, DATA, ClosedLoop, Served, free_port, wait_for

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
SHARE = fraction_vram_bytes(0.4, 16 * GIB)  # 6.4 GiB


def write_models(path, base, names):
    entries = "".join(
        f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in names
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")


def test_each_gpu_replica_books_its_fraction_and_a_third_is_refused(tmp_path):
    base = tmp_path / "models"
    for name in ("a", "b", "c"):
        shutil.copytree(HALF_PLUS_TWO, base / name / "1")
    config = tmp_path / "models.config"
    write_models(config, base, ["a", "b"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def states(name):
        r = requests.get(f"{url}/v1/models/{name}", timeout=30)
        return {
            int(s["version"]): (s["state"], s["status"]["error_code"], s["status"]["error_message"])
            for s in r.json().get("model_version_status", [])
        }

    def status():
        r = requests.get(f"{url}/v1/aspire/status", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    with Served(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1",
        "--gpus=1x16GiB",
        "--per_process_gpu_memory_fraction=0.4",
        f"--rest_api_port={port}",
        "--port=0",
        "--rest_api_host=127.0.0.1",
    ) as server:
        described = status()
        [gpu] = described["resources"]["gpus"]
        assert gpu["holders"] == {"{name: a version: 1}": SHARE, "{name: b version: 1}": SHARE}
        assert (gpu["reserved"], gpu["free"]) == (2 * SHARE, 16 * GIB - 2 * SHARE)
        for name in ("a", "b"):
            [placement] = described["placements"][name]["1"]
            assert (placement["gpu"], placement["vram_bytes"]) == (0, SHARE)

        with (
            ClosedLoop(f"{url}/v1/models/a:predict", clients=2) as load_a,
            ClosedLoop(f"{url}/v1/models/b:predict", clients=2) as load_b,
        ):
            load_a.wait_more(10)
            write_models(config, base, ["a", "b", "c"])
            wait_for(lambda: states("c").get(1, ("",))[0] == "END", 120, 0.2, what="c refused")
            load_a.wait_more(10)
            load_b.wait_more(10)
        assert load_a.failures == [] and load_b.failures == []
        _, code, message = states("c")[1]
        assert code == "RESOURCE_EXHAUSTED"
        assert message.startswith(
            "Insufficient resources to load servable {name: c version: 1}; needs 6.4 GiB of GPU "
            "memory (0.4 of GPU 0's 16.0 GiB, --per_process_gpu_memory_fraction), largest free "
            "block is 3.2 GiB"
        ), message
        for name in ("a", "b"):
            r = requests.post(
                f"{url}/v1/models/{name}:predict", json={"instances": [1.0]}, timeout=30
            )
            assert r.json() == {"predictions": [2.5]}

        address = server.out.find(r"Ray cluster address: (\S+)").group(1)
        table = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert table.returncode == 0, table.stderr
        print(table.stdout)
        assert re.search(
            r"\s0\s+16\.0 GiB\s+12\.8 GiB\s+3\.2 GiB\s+\{name: a version: 1\} 6\.4 GiB, "
            r"\{name: b version: 1\} 6\.4 GiB",
            table.stdout,
        ), table.stdout
    assert server.exit_code == 0
