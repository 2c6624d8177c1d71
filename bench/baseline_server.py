"""Baseline (b) of bench/suite.py: one uvicorn process, FastAPI, the models in a dict.

This is the server people write by hand around a model, with one difference that favours it: it
runs Aspire's own request core (deployments/replica/inference.py) on Aspire's loader, so the ratio
Aspire / baseline is the cost of Aspire's architecture (ingress -> Ray hop -> replica), not of
its JSON or TF code. Usage: python bench/baseline_server.py PORT NAME=SAVED_MODEL_VERSION_DIR ...
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402

from core.errors import AspireError, http_status  # noqa: E402
from deployments.replica import inference
from deployments.replica.loader import SavedModelLoader  # noqa: E402
from deployments.wire import tfs_json  # noqa: E402

port = int(sys.argv[1])
models = {
    name: SavedModelLoader(path).load()
    for name, path in (arg.split("=", 1) for arg in sys.argv[2:])
}
app = FastAPI()


@app.post("/v1/models/{model}:predict")
async def predict(model: str, request: Request):
    try:
        doc = tfs_json.parse_body(await request.body())
        if model not in models:
            raise AspireError(f"Servable not found for request: Latest({model})", "NOT_FOUND")
        code, text = inference.handle_rest(models[model], "predict", doc)
    except AspireError as err:
        code, text = err.code, err.message
    if code != "OK":
        return Response(
            json.dumps({"error": text}), http_status(code), media_type="application/json"
        )
    return Response(text, media_type="application/json")


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
