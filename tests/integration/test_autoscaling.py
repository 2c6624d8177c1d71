"""Autoscaling from Aspire's side file, end to end: `aspire serve --gpus=1x16GiB` on an embedded
Ray with one logical GPU. The autoscaled version books max_replicas of VRAM through admission,
so a second model that would fit beside one replica is refused; under closed-loop load Serve
scales the version up to max_replicas with no failed request, and back down when the load stops."""

import json
import re
import shutil
import subprocess
import time

import pytest
import requests

from tests.integration.conftest import ASPIRE, DATA, ClosedLoop, Served, free_port, wait_for

pytestmark = pytest.mark.ray
HALF_PLUS_TWO = DATA / "saved_model_half_plus_two_cpu" / "00000123"
GIB = 1024**3
# Replicas push their request counts to Serve's controller every
# RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S (10 s by default), so a look-back window
# of 2 s would see a count up to 10 s old: the test pushes every second.
FRESH_METRICS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


def test_autoscaled_version_books_max_replicas_and_follows_load(tmp_path):
    base = tmp_path / "models"
    for name in ("busy", "late"):
        shutil.copytree(HALF_PLUS_TWO, base / name / "1")
    config, settings = tmp_path / "models.config", tmp_path / "aspire.json"

    def write_models(names):
        config.write_text(
            "model_config_list {\n"
            + "".join(
                f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
                for n in names
            )
            + "}\n"
        )

    write_models(["busy"])
    # Serve scales to ceil(requests in flight / target). The replica counts a direct call from
    # its arrival to its answer: for half_plus_two (about a millisecond) under 6 Python clients
    # that averages about one, right on a target of 1, where a scale-up waits for a lucky
    # window. A target of 0.25 puts any steady load clearly above it and no load below it.
    settings.write_text(
        json.dumps(
            {
                "models": {
                    "busy": {
                        "device": "gpu",
                        "vram": "6GiB",
                        "autoscaling": {
                            "min_replicas": 1,
                            "max_replicas": 2,
                            "target_ongoing_requests": 0.25,
                            "upscale_delay_s": 0,
                            "downscale_delay_s": 2,
                            "look_back_period_s": 2,
                        },
                    },
                    "late": {"device": "gpu", "vram": "6GiB"},
                }
            }
        )
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def status():
        r = requests.get(f"{url}/v1/aspire/status", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def running():
        [placement] = status()["placements"]["busy"]["1"]
        return placement["running_replicas"]

    with Served(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1",
        f"--aspire_config_file={settings}",
        "--gpus=1x16GiB",
        f"--rest_api_port={port}",
        "--port=0",
        "--rest_api_host=127.0.0.1",
        env=FRESH_METRICS,
    ) as server:
        described = status()
        [placement] = described["placements"]["busy"]["1"]
        assert (
            placement["replicas"],
            placement["min_replicas"],
            placement["running_replicas"],
        ) == (2, 1, 1)
        [gpu] = described["resources"]["gpus"]
        assert gpu["reserved"] == 12 * GIB  # max_replicas x 6 GiB, booked before any scale-up
        # the cluster's own address: the session's other Ray may be up too, and `auto` would
        # not know which to pick
        address = server.out.find(r"Ray cluster address: (\S+)").group(1)
        table = subprocess.run(
            [ASPIRE, "status", f"--address={address}"], capture_output=True, text=True, timeout=120
        )
        assert re.search(r"busy\s+1\s+AVAILABLE\s+1/2 \(min 1\)", table.stdout), (
            table.stdout + table.stderr
        )

        # 6 GiB would fit beside one running replica, but not beside the booked maximum.
        write_models(["busy", "late"])

        def late_state():
            r = requests.get(f"{url}/v1/models/late", timeout=30).json()
            return [
                (s["state"], s["status"]["error_code"]) for s in r.get("model_version_status", [])
            ]

        wait_for(
            lambda: late_state() == [("END", "RESOURCE_EXHAUSTED")], 120, 0.2, what="late refused"
        )

        started = time.monotonic()
        with ClosedLoop(f"{url}/v1/models/busy:predict", clients=6) as load:
            wait_for(lambda: running() == 2, 180, 0.5, what="busy to scale up to 2 replicas")
            up_s = time.monotonic() - started
            load.wait_more(50)
        assert load.failures == []
        assert {p for _, p in load.answers} == {2.5}
        stopped = time.monotonic()
        wait_for(lambda: running() == 1, 180, 0.5, what="busy to scale back down to 1 replica")
        down_s = time.monotonic() - stopped
        assert requests.post(
            f"{url}/v1/models/busy:predict", json={"instances": [1.0]}, timeout=30
        ).json() == {"predictions": [2.5]}
        print(
            f"autoscaling: 1 -> 2 replicas {up_s:.1f} s after load began "
            f"({len(load.answers)} answers, 0 errors); 2 -> 1 {down_s:.1f} s after it stopped"
        )
