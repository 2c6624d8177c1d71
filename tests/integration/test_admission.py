"""GPU admission end to end: `aspire serve --gpus=2x16GiB` on an embedded Ray with 2 logical GPUs,
real SavedModels with declared needs, REST and `aspire status` as a user sees them."""

import json
import re
import shutil
import subprocess

import pytest
import requests

from tests.integration.conftest import ASPIRE, DATA, ClosedLoop, Served, free_port, wait_for

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
TEN_GIB = 10 * 1024**3


def write_models(path, base, names):
    entries = "".join(
        f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in names
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")


def write_settings(path, policies=None):
    models = {n: {"vram": "10GiB"} for n in ("a", "b", "c")}
    models["r"] = {"vram": "5GiB", "num_replicas": 2}
    for name, policy in (policies or {}).items():
        models[name]["version_policy"] = policy
    path.write_text(json.dumps({"models": models}))


def test_admission_places_refuses_and_retries_on_two_logical_gpus(tmp_path):
    base = tmp_path / "models"
    for name in ("a", "b", "c", "r"):
        shutil.copytree(HALF_PLUS_TWO, base / name / "1")
    config, settings = tmp_path / "models.config", tmp_path / "aspire.json"
    write_models(config, base, ["a", "b"])
    write_settings(settings)
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

    def gpu_of(described, name, version=1):
        [placement] = described["placements"][name][str(version)]
        return placement

    with Served(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1",
        f"--aspire_config_file={settings}",
        "--gpus=2x16GiB",
        f"--rest_api_port={port}",
        "--port=0",
        "--rest_api_host=127.0.0.1",
    ) as server:
        described = status()
        a, b = gpu_of(described, "a"), gpu_of(described, "b")
        # Each replica reports the CUDA_VISIBLE_DEVICES it runs with: the GPU reserved for it.
        assert {a["gpu"], b["gpu"]} == {0, 1}
        assert a["cuda_visible_devices"] == str(a["gpu"])
        assert b["cuda_visible_devices"] == str(b["gpu"])
        reserved = {g["index"]: g["reserved"] for g in described["resources"]["gpus"]}
        assert reserved == {0: TEN_GIB, 1: TEN_GIB}

        # A third 10 GiB model fits on neither GPU: refused, while a and b answer without error.
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
        print(
            f"while c was refused: a answered {len(load_a.answers)}, b {len(load_b.answers)}, "
            "0 errors"
        )
        state, code, message = states("c")[1]
        assert code == "RESOURCE_EXHAUSTED"
        assert message.startswith(
            "Insufficient resources to load servable {name: c version: 1}; "
            "needs 10.0 GiB of GPU memory, largest free block is 6.0 GiB"
        )
        r = requests.post(f"{url}/v1/models/c:predict", json={"instances": [1.0]}, timeout=30)
        assert r.status_code == 404 and "error" in r.json()
        assert server.out.find(r"Insufficient resources to load servable \{name: c version: 1\}")

        address = server.out.find(r"Ray cluster address: (\S+)").group(1)
        table = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert table.returncode == 0, table.stderr
        print(table.stdout)
        assert re.search(r"c\s+1\s+END\s+RESOURCE_EXHAUSTED: Insufficient resources", table.stdout)
        assert re.search(
            r"\s0\s+16\.0 GiB\s+10\.0 GiB\s+6\.0 GiB\s+\{name: [ab] version: 1\} 10\.0 GiB",
            table.stdout,
        ), table.stdout

        # Unloading a frees its GPU; the refused c, still aspired, is retried and lands there.
        write_models(config, base, ["b", "c"])
        wait_for(lambda: states("c").get(1, ("",))[0] == "AVAILABLE", 180, 0.2, what="c loaded")
        c = gpu_of(status(), "c")
        assert (c["gpu"], c["cuda_visible_devices"]) == (a["gpu"], a["cuda_visible_devices"])
        r = requests.post(f"{url}/v1/models/c:predict", json={"instances": [1.0]}, timeout=30)
        assert r.json() == {"predictions": [2.5]}
        assert server.out.find(
            r"Retrying servable \{name: c version: 1\}, refused for insufficient"
        )

        # b v2 needs room next to v1 under availability-preserving: refused, v1 keeps serving.
        shutil.copytree(HALF_PLUS_TWO, base / "b" / "2")
        wait_for(lambda: states("b").get(2, ("",))[0] == "END", 120, 0.2, what="b v2 refused")
        assert states("b")[2][1] == "RESOURCE_EXHAUSTED"
        assert states("b")[1][0] == "AVAILABLE"
        r = requests.post(f"{url}/v1/models/b:predict", json={"instances": [1.0]}, timeout=30)
        assert r.status_code == 200
        # Resource-preserving (unload first) is the documented way around it: v2 rolls out.
        write_settings(settings, {"b": "resource_preserving"})
        wait_for(lambda: states("b").get(2, ("",))[0] == "AVAILABLE", 180, 0.2, what="b v2 loaded")
        assert states("b")[1][0] == "END"
        assert gpu_of(status(), "b", 2)["gpu"] == b["gpu"]
        final = {g["index"]: sorted(g["holders"]) for g in status()["resources"]["gpus"]}
        assert sorted(final.values()) == [["{name: b version: 2}"], ["{name: c version: 1}"]]

        # Two replicas of 5 GiB fit only one per GPU (6 GiB free on each): each reserves its
        # own share and runs on its own GPU (one application per GPU), and the version answers.
        write_models(config, base, ["b", "c", "r"])
        wait_for(lambda: states("r").get(1, ("",))[0] == "AVAILABLE", 180, 0.2, what="r loaded")
        replicas = status()["placements"]["r"]["1"]
        assert sorted((p["gpu"], p["cuda_visible_devices"], p["replicas"]) for p in replicas) == [
            (0, "0", 1),
            (1, "1", 1),
        ]
        for _ in range(20):
            r = requests.post(f"{url}/v1/models/r:predict", json={"instances": [1.0]}, timeout=30)
            assert r.json() == {"predictions": [2.5]}
    assert server.exit_code == 0
