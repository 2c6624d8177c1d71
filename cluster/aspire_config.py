"""Aspire's side config: per-model settings TF Serving's ModelServerConfig cannot carry.

They live in a separate JSON file so the TF Serving config stays valid for TF Serving itself.
Example:

    {"models": {"my_model": {"version_policy": "resource_preserving",
                             "traffic": {"stable": 90, "canary": 10},
                             "num_replicas": 2,
                             "device": "gpu", "vram": "10GiB", "ram": "2GiB"}}}

Contract:
- Top level: an object whose only key is "models" (optional; `{}` means no settings), mapping
  model name -> object. Models not listed get `ModelSettings()` defaults from the caller.
- Per model, every field is optional:
  - "version_policy": "availability_preserving" (default) or "resource_preserving".
  - "traffic": a `policies.traffic.TrafficSplit` for unversioned requests; null means none.
  - "num_replicas": int >= 1; null means the server-wide default.
  - "device": "gpu" or "cpu"; null (default) means GPU when the cluster has GPUs, else CPU.
  - "vram", "ram": what one replica needs, as a size string ("10GiB", "512MiB"); null means
    estimated from the SavedModel (policies/admission.py `replica_need`).
- Unknown keys anywhere, and a key repeated in one object, are errors: a typo must never be
  silently ignored. Every error is `AspireError(..., "INVALID_ARGUMENT")` whose message names the
  file, and the model and field where there is one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from deployments.errors import AspireError
from policies.admission import DEVICES, parse_bytes
from policies.lifecycle import POLICIES
from policies.traffic import TrafficSplit

DEFAULT_VERSION_POLICY = "availability_preserving"
_TOP_LEVEL_KEYS = ("models",)
_MODEL_KEYS = ("version_policy", "traffic", "num_replicas", "device", "vram", "ram")


@dataclass(frozen=True)
class ModelSettings:
    version_policy: str = DEFAULT_VERSION_POLICY  # a key of policies.lifecycle.POLICIES
    traffic: TrafficSplit | None = None
    num_replicas: int | None = None  # None: the server-wide default
    device: str | None = None  # "gpu" | "cpu" | None: GPU when the cluster has GPUs
    vram_bytes: int | None = None  # declared per replica; None: estimated
    ram_bytes: int | None = None


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of repeated keys; a repeated model name is almost surely a mistake.
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _unknown(keys, allowed) -> str | None:
    extra = [k for k in keys if k not in allowed]
    if not extra:
        return None
    return f"unknown key {extra[0]!r} (expected one of {', '.join(allowed)})"


def _model_settings(body: object, fail) -> ModelSettings:
    if not isinstance(body, dict):
        raise fail(f"settings must be an object, got {type(body).__name__}")
    if problem := _unknown(body, _MODEL_KEYS):
        raise fail(problem)
    policy = body.get("version_policy", DEFAULT_VERSION_POLICY)
    if not isinstance(policy, str) or policy not in POLICIES:
        raise fail(f"unknown version_policy {policy!r} (expected {' or '.join(POLICIES)})")
    traffic = body.get("traffic")
    if traffic is not None:
        try:
            traffic = TrafficSplit.parse(traffic)
        except ValueError as e:
            raise fail(f"invalid traffic: {e}") from None
    replicas = body.get("num_replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                 or replicas < 1):
        raise fail(f"num_replicas must be an integer >= 1, got {replicas!r}")
    device = body.get("device")
    if device is not None and device not in DEVICES:
        raise fail(f"device must be {' or '.join(repr(d) for d in DEVICES)}, got {device!r}")
    sizes = {}
    for key in ("vram", "ram"):
        value = body.get(key)
        if value is None:
            sizes[key] = None
            continue
        try:
            sizes[key] = parse_bytes(value)
        except ValueError as e:
            raise fail(f"invalid {key}: {e}") from None
    if device == "cpu" and sizes["vram"]:
        raise fail("vram is declared but device is 'cpu'")
    return ModelSettings(policy, traffic, replicas, device, sizes["vram"], sizes["ram"])


def parse_aspire_config(text: str, source: str = "<aspire config>") -> dict[str, ModelSettings]:
    """Model name -> settings from the JSON text of an Aspire config; AspireError if invalid."""
    def fail(message: str) -> AspireError:
        return AspireError(f"Invalid Aspire config {source}: {message}", "INVALID_ARGUMENT")

    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise fail(f"line {e.lineno} column {e.colno}: {e.msg}") from None
    except _DuplicateKey as e:
        raise fail(f"key {e.args[0]!r} appears more than once") from None
    if not isinstance(doc, dict):
        raise fail(f"top level must be an object, got {type(doc).__name__}")
    if problem := _unknown(doc, _TOP_LEVEL_KEYS):
        raise fail(problem)
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise fail(f"'models' must be an object, got {type(models).__name__}")
    settings = {}
    for name, body in models.items():
        if not name:
            raise fail("model name must not be empty")
        settings[name] = _model_settings(
            body, lambda message, name=name: fail(f"model {name!r}: {message}"))
    return settings


def load_aspire_config(path: str) -> dict[str, ModelSettings]:
    """`parse_aspire_config` of the file at `path`; AspireError if it cannot be read or is invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AspireError(f"Cannot read Aspire config {path}: {e}", "INVALID_ARGUMENT") from None
    return parse_aspire_config(text, source=path)
