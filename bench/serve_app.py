"""Baseline (c) of bench/suite.py: a minimal hand-written Ray Serve app.

One deployment holding the models, behind Serve's own HTTP proxy and a FastAPI ingress, as the
Ray Serve docs show it. It runs the same request core and loader as Aspire and the baseline (b),
with Aspire's replica settings (1 replica, max_ongoing_requests=64), so Aspire / (c) compares
request paths, not settings. Usage: python bench/serve_app.py PORT NAME=SAVED_MODEL_VERSION_DIR ...
Prints READY once it answers; stops on SIGINT or SIGTERM.
"""

import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from ray import serve  # noqa: E402

app = FastAPI()


@serve.deployment(num_replicas=1, max_ongoing_requests=64)
@serve.ingress(app)
class Models:
    def __init__(self, paths: dict):
        from deployments.replica.loader import SavedModelLoader

        self.models = {name: SavedModelLoader(path).load() for name, path in paths.items()}

    @app.post("/v1/models/{model}:predict")
    async def predict(self, model: str, request: Request):
        from core.errors import AspireError, http_status
        from deployments.replica import inference
        from deployments.wire import tfs_json

        if model not in self.models:
            return Response(
                json.dumps({"error": f"Servable not found for request: Latest({model})"}),
                404,
                media_type="application/json",
            )
        try:  # the same steps as the baseline (b)
            code, text = inference.handle_rest(
                self.models[model], "predict", tfs_json.parse_body(await request.body())
            )
        except AspireError as err:
            code, text = err.code, err.message
        if code != "OK":
            return Response(
                json.dumps({"error": text}), http_status(code), media_type="application/json"
            )
        return Response(text, media_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    paths = dict(arg.split("=", 1) for arg in sys.argv[2:])
    root = str(Path(__file__).resolve().parent.parent)
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Models.bind(paths), name="bench", route_prefix="/")
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
