"""Aspire's side config: per-model settings TF Serving's ModelServerConfig cannot carry.

They live in a separate JSON file so the TF Serving config stays valid for TF Serving itself.
Example:

    {"models": {"my_model": {"version_policy": "resource_preserving",
                             "traffic": {"stable": 90, "canary": 10},
                             "num_replicas": 2,
                             "device": "gpu", "vram": "10GiB", "ram": "2GiB"},
                "busy_model": {"autoscaling": {"min_replicas": 1, "max_replicas": 4,
                                               "target_ongoing_requests": 2}}}}

Contract:
- Top level: an object whose only key is "models" (optional; `{}` means no settings), mapping
  model name -> object. Models not listed get `ModelSettings()` defaults from the caller.
- Per model, every field is optional:
  - "version_policy": "availability_preserving" (default) or "resource_preserving".
  - "traffic": a `policies.traffic.TrafficSplit` for unversioned requests; null means none.
  - "num_replicas": int >= 1; null means the server-wide default.
  - "autoscaling": Ray Serve autoscaling instead of a fixed count (not with "num_replicas"):
    "min_replicas" (int >= 1), "max_replicas" (int >= min), "target_ongoing_requests" (> 0;
    default 2), and optionally "upscale_delay_s" / "downscale_delay_s" (>= 0; Serve's defaults
    30 s / 600 s) and "look_back_period_s" (> 0; Serve's default 30 s). Admission books
    max_replicas replicas up front, so a scale-up never fails for memory and never takes room from
    another version.
  - "max_ongoing_requests": int >= 1, requests one replica runs at once; null means the
    server-wide --max_ongoing_requests.
  - "max_queued_requests": int >= 0 or -1 (no limit), requests each router holds for the version
    while every replica is full; beyond it the router answers 429 at once. null means the
    server-wide --max_queued_requests.
  - "health_check_period_s", "health_check_timeout_s": numbers > 0, how often Serve checks
    each replica of the model and how long a check may take (three failures in a row replace
    the replica); null means the server-wide --replica_health_check_period_s/_timeout_s.
  - "device": "gpu" or "cpu"; null (default) means GPU when the cluster has GPUs, else CPU.
  - "vram", "ram": what one replica needs, as a size string ("10GiB", "512MiB"); null means
    estimated from the SavedModel (policies/admission.py `replica_need`).
  - "rollout": a progressive rollout of a candidate version (config/rollout_config.py): a
    shadow phase and canary steps judged against the baseline, run by cluster/rollouts.py.
    While it is declared it decides the unversioned split, in place of "traffic".
  - "experiment": sticky A/B assignment (`policies.traffic.Experiment`): "arms" (a split, as
    "traffic"), "key" (the header or gRPC metadata entry naming who asks), "salt"; not with
    "traffic". A rollout, while declared, decides the split instead.
  - "placement": "dedicated" (default: each version runs in replicas of its own) or "shared"
    (each version loads into a shared host that holds many; cluster/host_admission.py). A shared
    model takes its replicas, request limits and health checks from its host, so "num_replicas",
    "autoscaling", "max_ongoing_requests", "max_queued_requests" and the health-check keys
    are refused beside it.
- Unknown keys anywhere, and a key repeated in one object, are errors: a typo must never be
  silently ignored. Every error is `AspireError(..., "INVALID_ARGUMENT")` whose message names the
  file, and the model and field where there is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from config.rollout_config import parse_rollout
from core.errors import AspireError
from core.units import parse_bytes
from policies.admission import DEVICES
from policies.lifecycle import ASPIRED_VERSION_POLICIES
from policies.rollout import RolloutSpec
from policies.traffic import Experiment, TrafficSplit

DEFAULT_VERSION_POLICY = "availability_preserving"
_TOP_LEVEL_KEYS = ("models",)
_MODEL_KEYS = (
    "version_policy",
    "traffic",
    "num_replicas",
    "autoscaling",
    "max_ongoing_requests",
    "max_queued_requests",
    "health_check_period_s",
    "health_check_timeout_s",
    "device",
    "vram",
    "ram",
    "placement",
    "rollout",
    "experiment",
)
PLACEMENTS = ("dedicated", "shared")
_HOST_WIDE_KEYS = (
    "num_replicas",
    "autoscaling",
    "max_ongoing_requests",
    "max_queued_requests",
    "health_check_period_s",
    "health_check_timeout_s",
)
_AUTOSCALING_KEYS = (
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "look_back_period_s",
)


@dataclass(frozen=True)
class Autoscaling:
    """Ray Serve autoscaling bounds for one version's replicas (Serve's own field names)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float | None = None  # None: Serve's default
    downscale_delay_s: float | None = None
    look_back_period_s: float | None = None

    def serve_config(self, min_replicas: int, max_replicas: int) -> dict:
        """Serve's autoscaling_config for one application holding part of the replicas."""
        config = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "initial_replicas": min_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            # counts the calls on the direct data path too (deployments/replica/autoscaling.py)
            "policy": {"policy_function": AUTOSCALING_POLICY},
        }
        for key in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config


AUTOSCALING_POLICY = "deployments.replica.autoscaling:direct_path_policy"


@dataclass(frozen=True)
class ModelSettings:
    version_policy: str = (
        DEFAULT_VERSION_POLICY  # a key of policies.lifecycle.ASPIRED_VERSION_POLICIES
    )
    traffic: TrafficSplit | None = None
    num_replicas: int | None = None  # None: the server-wide default
    autoscaling: Autoscaling | None = None  # set: Serve autoscaling, not num_replicas
    device: str | None = None  # "gpu" | "cpu" | None: GPU when the cluster has GPUs
    vram_bytes: int | None = None  # declared per replica; None: estimated
    ram_bytes: int | None = None
    max_ongoing_requests: int | None = None  # None: the server-wide default
    max_queued_requests: int | None = None  # None: the server-wide default; -1: no limit
    health_check_period_s: float | None = None  # None: the server-wide default
    health_check_timeout_s: float | None = None
    placement: str = (
        "dedicated"  # or "shared": loaded into a shared host (cluster/host_admission.py)
    )
    rollout: RolloutSpec | None = None  # config/rollout_config.py; decides the split while set
    experiment: Experiment | None = None  # sticky A/B arms, in place of "traffic"


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


def _unknown(keys: Iterable[object], allowed: Collection[str]) -> str | None:
    extra = [k for k in keys if k not in allowed]
    if not extra:
        return None
    return f"unknown key {extra[0]!r} (expected one of {', '.join(allowed)})"


def _model_settings(body: object, fail: Callable[[str], AspireError]) -> ModelSettings:
    if not isinstance(body, dict):
        raise fail(f"settings must be an object, got {type(body).__name__}")
    if problem := _unknown(body, _MODEL_KEYS):
        raise fail(problem)
    policy = body.get("version_policy", DEFAULT_VERSION_POLICY)
    if not isinstance(policy, str) or policy not in ASPIRED_VERSION_POLICIES:
        raise fail(
            f"unknown version_policy {policy!r} (expected {' or '.join(ASPIRED_VERSION_POLICIES)})"
        )
    traffic = body.get("traffic")
    if traffic is not None:
        try:
            traffic = TrafficSplit.parse(traffic)
        except ValueError as e:
            raise fail(f"invalid traffic: {e}") from None
    replicas = body.get("num_replicas")
    if replicas is not None and (
        isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1
    ):
        raise fail(f"num_replicas must be an integer >= 1, got {replicas!r}")
    autoscaling = body.get("autoscaling")
    if autoscaling is not None:
        if replicas is not None:
            raise fail("num_replicas and autoscaling cannot both be set")
        autoscaling = _autoscaling(autoscaling, fail)
    ongoing = body.get("max_ongoing_requests")
    if ongoing is not None and (not _is_int(ongoing) or ongoing < 1):
        raise fail(f"max_ongoing_requests must be an integer >= 1, got {ongoing!r}")
    queued = body.get("max_queued_requests")
    if queued is not None and (not _is_int(queued) or queued < -1):
        raise fail(
            f"max_queued_requests must be an integer >= 0, or -1 for no limit, got {queued!r}"
        )
    checks = {}
    for key in ("health_check_period_s", "health_check_timeout_s"):
        value = body.get(key)
        if value is not None and (not _is_number(value) or not value > 0):
            raise fail(f"{key} must be a number > 0, got {value!r}")
        checks[key] = None if value is None else float(value)
    device = body.get("device")
    if device is not None and device not in DEVICES:
        raise fail(f"device must be {' or '.join(repr(d) for d in DEVICES)}, got {device!r}")
    sizes: dict[str, int | None] = {}
    for key in ("vram", "ram"):
        value = body.get(key)
        if value is None:
            sizes[key] = None
            continue
        try:
            sizes[key] = parse_bytes(value)
        except ValueError as e:
            raise fail(f"invalid {key}: {e}") from None
    placement = body.get("placement", "dedicated")
    if placement not in PLACEMENTS:
        raise fail(f"placement must be 'dedicated' or 'shared', got {placement!r}")
    if placement == "shared":
        for key in _HOST_WIDE_KEYS:
            if body.get(key) is not None:
                raise fail(f'{key} does not apply to "placement": "shared" (the host sets it)')
    if device == "cpu" and sizes["vram"]:
        raise fail("vram is declared but device is 'cpu'")
    experiment = body.get("experiment")
    if experiment is not None:
        if traffic is not None:
            raise fail('"traffic" and "experiment" cannot both be set (an experiment is a split)')
        try:
            experiment = Experiment.parse(experiment)
        except ValueError as e:
            raise fail(f"invalid {e}") from None
    rollout = body.get("rollout")
    if rollout is not None:
        try:
            rollout = parse_rollout(rollout)
        except ValueError as e:
            raise fail(f"invalid {e}") from None
    return ModelSettings(
        policy,
        traffic,
        replicas,
        autoscaling,
        device,
        sizes["vram"],
        sizes["ram"],
        ongoing,
        queued,
        **checks,
        placement=placement,
        rollout=rollout,
        experiment=experiment,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _autoscaling(body: object, fail: Callable[[str], AspireError]) -> Autoscaling:
    if not isinstance(body, dict):
        raise fail(f"autoscaling must be an object, got {type(body).__name__}")
    if problem := _unknown(body, _AUTOSCALING_KEYS):
        raise fail(f"autoscaling: {problem}")
    for key in ("min_replicas", "max_replicas"):
        if key not in body:
            raise fail(f"autoscaling: {key} is required")
    low, high = body["min_replicas"], body["max_replicas"]
    if not _is_int(low) or low < 1:
        raise fail(f"autoscaling: min_replicas must be an integer >= 1, got {low!r}")
    if not _is_int(high) or high < low:
        raise fail(
            f"autoscaling: max_replicas must be an integer >= min_replicas ({low}), got {high!r}"
        )
    target = body.get("target_ongoing_requests", 2.0)
    if not _is_number(target) or not target > 0 or target == float("inf"):
        raise fail(f"autoscaling: target_ongoing_requests must be a number > 0, got {target!r}")
    delays = {}
    for key in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
        value = body.get(key)
        low_ok = (lambda v: v > 0) if key == "look_back_period_s" else (lambda v: v >= 0)
        if value is not None and (
            not _is_number(value) or not low_ok(value) or value == float("inf")
        ):
            bound = "> 0" if key == "look_back_period_s" else ">= 0"
            raise fail(f"autoscaling: {key} must be a number {bound}, got {value!r}")
        delays[key] = value
    return Autoscaling(low, high, float(target), **delays)


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

        def fail_model(message: str, name: str = name) -> AspireError:
            return fail(f"model {name!r}: {message}")

        settings[name] = _model_settings(body, fail_model)
    return settings


def load_aspire_config(path: str) -> dict[str, ModelSettings]:
    """`parse_aspire_config` of the file at `path`; AspireError if it cannot be read or is
    invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AspireError(f"Cannot read Aspire config {path}: {e}", "INVALID_ARGUMENT") from None
    return parse_aspire_config(text, source=path)
