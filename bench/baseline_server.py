"""Baseline for bench/latency.py: one uvicorn process, FastAPI, the model in a dict.

It runs the same request core as Aspire (deployments/inference.py) on the same loader, with no
Ray, no proxy and no handle hop, so the ratio Aspire/baseline is the cost of Aspire's
architecture (proxy -> router -> version deployment) on one request.
"""
import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from deployments import inference, json_tensor
from deployments.errors import AspireError, http_status
from deployments.loader import SavedModelLoader

name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
models = {name: SavedModelLoader(path).load()}
app = FastAPI()


@app.post("/v1/models/{model}:predict")
async def predict(model: str, request: Request):
    try:
        doc = json_tensor.parse_body(await request.body())
        code, text = inference.handle_rest(models[model], "predict", doc)
    except AspireError as err:
        code, text = err.code, err.message
    if code != "OK":
        return Response(json.dumps({"error": text}), http_status(code), media_type="application/json")
    return Response(text, media_type="application/json")


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
