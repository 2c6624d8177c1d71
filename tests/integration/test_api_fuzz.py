"""Schema-driven fuzzing of the REST API (reliability plan I1, error hygiene S5).

schemathesis generates requests for every operation of docs/openapi.yaml, both valid ones
(positive) and ones that break the schema (negative), and sends them to the session's real
Aspire. Model names and versions are steered to the served models often enough that bodies
reach the JSON <-> tensor codec and TensorFlow, not only 404s.

Contract checked, for every response:
1. no 5xx (`not_a_server_error`);
2. the status is one the operation documents, with the documented content type, and a 2xx body
   matches the documented schema (the document is user documentation: it must be right);
3. a non-2xx is application/json with exactly {"error": <str>} (but for TF Serving's HTML 404
   page of a path outside /v1/ and the Open Inference Protocol's /v2), holds no traceback, no
   absolute file path and no more than 256 bytes of any one request input, and is at most
   4 KiB.
And for the run: at least 1,000 requests, generated deterministically (the same requests on
every run), after which the server answers and no servable replica restarted (same PIDs).

Two path inputs the schema never generates, a 5000-byte malformed path and a 5000-digit
version, are tried on their own (found while writing this file: both were mishandled).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "openapi.yaml"
# Requests per operation and mode. Hypothesis stops early once an operation has nothing new to
# generate (e.g. GET /v1/models), so the run counts what was actually sent.
EXAMPLES = {"positive": 50, "negative": 30}
MIN_REQUESTS = 1000
MAX_ERROR_BYTES = 4096
MAX_ECHO_BYTES = 256  # TF Serving's kMaxJsonDebugStringBytes
# a stack trace, or a path of the server's files (the checkout, the interpreter, common roots)
LEAKS = re.compile(
    "|".join(
        [
            r"Traceback",
            r"File \"",
            r"site-packages",
            r"dist-packages",
            r"\.py\b",
            "/home/",
            "/usr/",
            "/tmp/",
            "/root/",
            re.escape(str(ROOT)),
            re.escape(sys.prefix),
        ]
    )
)


def _strings(value):
    """Every string inside a generated value (path parameter or JSON body)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _echoed_bytes(s: str, message: str) -> int:
    """UTF-8 size of the longest prefix of `s` found in `message` (prefixes of a found prefix
    are found too, so a binary search over the length finds it)."""
    low, high = 0, len(s)
    while low < high:
        mid = (low + high + 1) // 2
        if s[:mid] in message:
            low = mid
        else:
            high = mid - 1
    return len(s[:low].encode("utf-8", "surrogatepass"))


def _leak(message: str, case) -> str | None:
    """A traceback or server file path in `message` that the request did not carry itself (an
    echoed input such as a model name "/tmp/x" is not a leak)."""
    sent = list(_strings([case.path_parameters or {}, case.body]))
    for match in LEAKS.finditer(message):
        if not any(match.group(0) in s for s in sent):
            return match.group(0)
    return None


def error_body_hygiene(ctx, response, case):
    """Check 3 of the module docstring."""
    if 200 <= response.status_code < 300:
        return None
    path = urlsplit(response.request.url).path
    content_type = (response.headers.get("content-type") or [""])[0]
    text = response.content.decode("utf-8", "replace")
    assert len(response.content) <= MAX_ERROR_BYTES, f"error body of {len(response.content)} bytes"
    if response.status_code == 404 and not path.lower().startswith(("/v1/", "/v2")):
        # TF Serving's page for a path outside /v1/: HTML by design, and always the same page
        assert content_type.startswith("text/html") and _leak(text, case) is None, text[:300]
        return None
    assert content_type.split(";")[0].strip() == "application/json", (
        f"error with content type {content_type!r}"
    )
    body = json.loads(text)
    assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), (
        f"error body is not exactly {{'error': <str>}}: {text[:300]}"
    )
    message = body["error"]
    leak = _leak(message, case)
    assert leak is None, f"error leaks {leak!r}: {message[:300]!r}"
    for s in _strings([case.path_parameters or {}, case.body]):
        if len(s.encode("utf-8", "surrogatepass")) > MAX_ECHO_BYTES:
            echoed = _echoed_bytes(s, message)
            # the slack: the text after a cut echo may happen to continue the input ('"', "...")
            assert echoed <= MAX_ECHO_BYTES + 16, (
                f"error echoes {echoed} bytes of an input: {message[:200]!r}..."
            )
    return None


class Served:
    """What the server has, read from its own API: model names, (name, version) pairs, and per verb
    (predict, classify, regress) the signature names and input aliases of its models."""

    def __init__(self, base_url: str):
        models = requests.get(f"{base_url}/v1/models", timeout=30).json()["models"]
        # AVAILABLE ones first: Hypothesis draws the first choices most often
        pairs = sorted(
            (
                (s["state"] != "AVAILABLE", m["name"], int(s["version"]))
                for m in models
                for s in m["model_version_status"]
            )
        )
        self.pairs = [(name, version) for _, name, version in pairs]
        self.names = list(dict.fromkeys(name for name, _ in self.pairs))
        signatures: dict[str, set] = {"predict": set(), "classify": set(), "regress": set()}
        aliases: set = set()
        for name in self.names:
            r = requests.get(f"{base_url}/v1/models/{name}/metadata", timeout=30)
            if r.status_code != 200:
                continue  # a model with no AVAILABLE version
            for key, sig in r.json()["metadata"]["signature_def"]["signature_def"].items():
                verb = sig["method_name"].rsplit("/", 1)[-1]
                if verb in signatures:
                    signatures[verb].add(key)
                if verb == "predict":
                    aliases.update(sig["inputs"])
        self.signatures = {verb: sorted(keys) for verb, keys in signatures.items()}
        self.aliases = sorted(aliases)


def _bodies(served: Served, verb: str):
    """Bodies shaped like the served models' inputs, with random numbers, shapes and ragged or
    mistyped parts: what the schema's generic JSON rarely produces, and what reaches the tensor
    codec and TensorFlow instead of stopping at the first type check."""
    from hypothesis import strategies as st

    floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
    numbers = st.one_of(
        floats,
        floats,
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**70), 2**70),
        st.booleans(),
        st.text(max_size=3),
    )
    shapes = st.lists(st.integers(0, 3), max_size=3)

    def shaped(shape):
        tensor = numbers
        for size in reversed(shape):
            tensor = st.lists(tensor, min_size=size, max_size=size)
        return tensor

    ragged = st.recursive(numbers, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
    tensors = st.one_of(shapes.flatmap(shaped), ragged)
    # names over 256 bytes: an error may name them, but not echo them whole (S5)
    long_names = st.builds(
        lambda piece, n: (piece * n)[:n], st.text(min_size=1, max_size=4), st.integers(257, 2000)
    )
    names = st.one_of(st.sampled_from(served.signatures[verb] + ["", "unknown"]), long_names)
    # without a name, predict runs serving_default; classify and regress would always fail
    signature = (
        st.fixed_dictionaries({}, optional={"signature_name": names})
        if verb == "predict"
        else st.fixed_dictionaries({"signature_name": names})
    )
    aliases = st.one_of(st.sampled_from(served.aliases + ["unknown"]), long_names)
    if verb == "predict":
        named = st.dictionaries(aliases, tensors, max_size=2)
        rows = st.one_of(
            shapes.flatmap(lambda s: st.lists(shaped(s), min_size=1, max_size=4)),
            st.lists(tensors, min_size=1, max_size=4),
            st.lists(named, min_size=1, max_size=3),
        )
        tensor_part = st.one_of(
            st.fixed_dictionaries({"instances": rows}),
            st.fixed_dictionaries({"inputs": st.one_of(tensors, named)}),
        )
    else:
        feature = st.one_of(numbers, st.lists(numbers, max_size=3))
        example = st.dictionaries(aliases, feature, max_size=2)
        tensor_part = st.fixed_dictionaries(
            {"examples": st.lists(example, min_size=1, max_size=3)}, optional={"context": example}
        )
    return st.tuples(signature, tensor_part).map(lambda parts: {**parts[0], **parts[1]})


def _steer(schema, served: Served) -> None:
    """Hooks that put served model names (or a name with one of its versions) into most
    generated requests, keeping the generated ones otherwise, and model-shaped bodies (`_bodies`)
    into about half of the inference requests."""
    from hypothesis import strategies as st

    def swap(value, key, choices):
        # the generated value last: Hypothesis draws the first choices most often
        return st.sampled_from([*choices, None]).map(
            lambda c: value if c is None else {**value, key: c}
        )

    @schema.hook
    def flatmap_path_parameters(ctx, params):
        if not isinstance(params, dict) or "model_name" not in params:
            return st.just(params)
        if "version" not in params:
            return swap(params, "model_name", served.names * 2)
        # a name with one of its own versions: a random pair would mostly be a 404
        return st.sampled_from([*served.pairs, None, None]).map(
            lambda p: params if p is None else {**params, "model_name": p[0], "version": p[1]}
        )

    @schema.hook
    def before_generate_body(ctx, strategy):
        verb = ctx.operation.path.rsplit(":", 1)[-1]
        if verb not in served.signatures:
            return strategy
        return st.one_of(_bodies(served, verb), strategy)


def fuzz(base_url: str) -> dict:
    """Runs the schema's operations against `base_url`: first each documented example once,
    then generated requests. Returns {"requests", "statuses", "by_operation", "examples"
    (operation -> statuses of its documented examples), "seconds", "digest" (of every request
    sent), "failures" (one per failed check, with a curl command to reproduce it)}."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_path(SPEC)
    schema.validate()  # a valid OpenAPI 3.0 document, or no run
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        error_body_hygiene,
    ]
    statuses: Counter = Counter()
    by_operation: Counter = Counter()
    examples: dict[str, list[int]] = {}
    failures: list[str] = []
    session = requests.Session()
    digest = hashlib.sha256()
    started = time.monotonic()

    def send(case) -> int | None:
        try:
            response = case.call(base_url=base_url, session=session, timeout=60)
        except requests.RequestException as exc:
            failures.append(f"{case.method} {case.formatted_path}: transport error {exc!r}")
            return None
        statuses[response.status_code] += 1
        by_operation[f"{case.operation.label} -> {response.status_code}"] += 1
        url = urlsplit(response.request.url)  # not the host: the port differs between runs
        digest.update(f"{response.request.method} {url.path}?{url.query}\n".encode())
        body = response.request.body
        digest.update(body if isinstance(body, bytes) else str(body or "").encode())
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.append(f"{failure.title}: {failure.message}\n  {case.as_curl_command()}")
        except AssertionError as exc:
            failures.append(f"{exc}\n  {case.as_curl_command()}")
        return response.status_code

    def run(strategy, count: int, each) -> None:
        # derandomize: the same requests on every run; no shrinking: failures are collected,
        # not raised, so every distinct one is reported
        @settings(
            max_examples=count,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def test(case):
            each(case)

        try:
            test()
        except Unsatisfiable:  # nothing to negate: no parameters, no body
            pass

    def example(case) -> None:
        examples.setdefault(case.operation.label, []).append(send(case))

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:  # before the hooks: the examples as documented
        for strategy in operation.get_strategies_from_examples():
            run(strategy, 1, example)
    _steer(schema, Served(base_url))
    for operation in operations:
        for mode, count in (
            (GenerationMode.POSITIVE, EXAMPLES["positive"]),
            (GenerationMode.NEGATIVE, EXAMPLES["negative"]),
        ):
            run(operation.as_strategy(generation_mode=mode), count, send)
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "by_operation": dict(sorted(by_operation.items())),
        "examples": examples,
        "seconds": time.monotonic() - started,
        "digest": digest.hexdigest()[:16],
        "failures": failures,
    }


def _replica_pids(base_url: str) -> dict[str, tuple[int, int]]:
    """Per servable application: (PID recorded at load in /v1/aspire/status, PID answering a
    ping now). A crashed replica is restarted by Serve with a new PID."""
    from ray import serve

    status = requests.get(f"{base_url}/v1/aspire/status", timeout=30).json()
    pids = {}
    for versions in status["placements"].values():
        for placements in versions.values():
            for p in placements:
                handle = serve.get_deployment_handle("servable", p["app"])
                pids[p["app"]] = (p["pid"], handle.ping.remote().result(timeout_s=30).pid)
    return pids


def run_fuzz_process(base_url: str, timeout_s: float = 300) -> dict:
    """`fuzz` in a fresh interpreter. Hypothesis also draws literals from the local modules
    loaded so far, so in the test's own process the requests would depend on which other tests
    the session collected; a fresh process (with a fixed hash seed) sends the same ones always."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_api_fuzz", base_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fuzzed_requests_get_documented_answers_and_no_replica_restarts(aspire):
    import ray

    from tests.integration.conftest import wait_for

    before = _replica_pids(aspire.url)
    assert before, "no servable replicas to watch"
    # The documented examples name the label "stable" of half_plus_two (version 123)
    code, message = ray.get(
        aspire.manager.reload_config.remote(aspire.models, {"half_plus_two": {"stable": 123}})
    )
    assert code == "OK", message
    try:
        wait_for(
            lambda: (
                aspire.post(
                    "/v1/models/half_plus_two/labels/stable:predict", {"instances": [1.0]}
                ).status_code
                == 200
            ),
            30,
            what="the routers to know the label",
        )
        report = run_fuzz_process(aspire.url)
    finally:
        ray.get(aspire.manager.reload_config.remote(aspire.models, {}))
    print(
        f"\napi fuzz: {report['requests']} requests in {report['seconds']:.1f} s "
        f"(request set {report['digest']}), statuses {report['statuses']}, "
        f"{len(report['failures'])} failed checks"
    )
    for line in report["failures"][:20]:
        print("  " + line)
    assert report["requests"] >= MIN_REQUESTS, f"only {report['requests']} requests"
    assert not report["failures"], "\n".join(report["failures"][:20])
    # every documented example works as documented: the example model has no rollout, so its
    # rollout operations answer their documented 404 ("Model half_plus_two has no rollout")
    wrong = {
        op: codes
        for op, codes in report["examples"].items()
        if set(codes) != ({404} if "/rollout" in op else {200})
    }
    assert not wrong, f"documented examples answered {wrong}"
    live = aspire.post("/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert live.status_code == 200 and live.json() == {"predictions": [2.5]}, live.text
    after = _replica_pids(aspire.url)
    print(
        f"replica PIDs before {sorted(p for _, p in before.values())}, "
        f"after {sorted(p for _, p in after.values())}"
    )
    assert after == before, f"replicas restarted or moved: before {before}, after {after}"


def test_long_malformed_path_is_not_echoed_whole(aspire):
    name = "a" * 5000
    r = requests.put(f"{aspire.url}/v1/models/{name}", timeout=30)
    print(f"\nPUT of a 5000-byte path: {r.status_code}, error body of {len(r.content)} bytes")
    assert r.status_code == 400 and list(r.json()) == ["error"], r.text[:300]
    assert len(r.content) <= MAX_ERROR_BYTES
    assert _echoed_bytes(name, r.json()["error"]) <= MAX_ECHO_BYTES + 16


def test_version_of_5000_digits_is_refused_with_400(aspire):
    digits = "9" * 5000
    r = aspire.get(f"/v1/models/half_plus_two/versions/{digits}")
    print(f"\nversion of 5000 digits: {r.status_code} {r.text[:80]!r}")
    assert r.status_code == 400 and list(r.json()) == ["error"], r.text[:300]
    assert r.json()["error"].startswith("Failed to convert version: ")
    assert len(r.content) <= MAX_ERROR_BYTES


if __name__ == "__main__":  # python -m tests.integration.test_api_fuzz http://HOST:PORT
    print(json.dumps(fuzz(sys.argv[1])))
