"""`aspire`: the command line. `aspire serve` takes TensorFlow Serving's flags with the same names
and meanings; `aspire status` prints every model's versions and states.

Life of a version starts here: flags are validated once, Ray is started (embedded) or joined
(`--address`), the manager actor starts its file-system source, and the router deployment is
created; its replicas listen on `--rest_api_port` and `--port`. Like TF Serving, `serve` reports the
REST API ready once every model's first version has loaded or failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time

from cluster.flags import FlagError, build_parser, token_digests, validate
from cluster.logs import CliLogging, EventFollower
from cluster.tfs_flags import unknown_arguments
from core import protos

log = logging.getLogger("aspire")


def _use_ray_token_if_present() -> None:
    """Send Ray's auth token when joining a cluster by explicit address.

    Ray enables token authentication by default on new clusters and sends the token on its own
    only for `--address=auto`; with an explicit address the client must be told. A token on this
    machine (~/.ray/auth_token, or RAY_AUTH_TOKEN[_PATH]) means the user has one to send.
    An explicit RAY_AUTH_MODE always wins.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _ray_log_dir() -> str:
    """Ray's session log directory on this machine (where its processes write their logs)."""
    import tempfile

    from core.ray_internals import session_log_dir

    return session_log_dir() or tempfile.gettempdir()  # a Ray Client connection: no session


def serve_main(args: argparse.Namespace, logs: CliLogging) -> int:
    validate(args)
    auth_digest, admin_digest = token_digests(args)  # FlagError (exit 2) for an unusable file
    if args.address not in (None, "auto"):
        _use_ray_token_if_present()  # before Ray is imported: it reads the mode once
    import ray

    logs.quiet_libraries()  # Ray brings its own stream handler on import

    from cluster import launcher
    from cluster.server_args import manager_config, server_options
    from core.errors import AspireError
    from core.names import NAMESPACE

    try:
        config = manager_config(args)
        config.fingerprint = flags_fingerprint(args)
        options = server_options(args, auth_digest, admin_digest)
    except AspireError as err:
        print(f"Failed to start server. Error: {err.code}: {err.message}", file=sys.stderr)
        return 255
    models = config.models
    started = time.monotonic()
    embedded = args.address is None
    # Workers' output (Ray's, TF's) stays in their files; the manager's lines come through its
    # EventLog, and Ray's driver lines go to aspire-cli.log (cluster/logs.py)
    if embedded:  # "local": always a new Ray instance, never one found on the machine
        num_gpus = None  # Ray detects real GPUs itself
        if args.gpus is not None:
            from cluster.inventory import declared_inventory

            num_gpus = len(declared_inventory(args.gpus, "node"))
        launcher.set_serve_env()
        ray.init(
            address="local",
            namespace=NAMESPACE,
            include_dashboard=False,
            num_gpus=num_gpus,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(
            address=args.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
    gcs = ray.get_runtime_context().gcs_address
    log.info("Ray cluster address: %s (aspire status --address=%s)", gcs, gcs)
    log_dir = _ray_log_dir()
    logs.session_started(log_dir)
    log.info("Ray's, Serve's and TensorFlow's own logs are in %s", log_dir)
    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum, _frame):
        if interrupted:  # a second Ctrl-C: leave now
            os._exit(130)
        interrupted.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    manager = follower = None
    try:
        manager = launcher.start(config, options, adopt=not embedded)
        logs.quiet_libraries()  # Serve's driver logger, configured when Serve was imported
        follower = EventFollower(
            lambda seq, timeout_s: ray.get(manager.events.remote(seq, timeout_s)), logs.show
        )
        follower.start()
        pending = launcher.wait_initial_load(
            manager, [m.name for m in models], args.initial_load_timeout_s, stop
        )
        for name in [] if stop.is_set() else pending:
            log.warning(
                "model %s has no version loaded after %.0f s; still polling",
                name,
                args.initial_load_timeout_s,
            )
        if not stop.is_set():
            follower.catch_up()  # the loads' lines first
            if args.port:
                log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", args.port)
            if args.rest_api_port:
                log.info(
                    "Exporting HTTP/REST API at:%s:%d ...",
                    args.rest_api_host,
                    args.rest_api_port,
                )
            log.info("Ready %.1f s after start", time.monotonic() - started)
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down")
        stopping = time.monotonic()
        launcher.stop(manager, before_kill=follower.drain if follower else None)
        ray.shutdown()
        log.info("stopped in %.1f s", time.monotonic() - stopping)
    return 0


def flags_fingerprint(args: argparse.Namespace) -> str:
    """A digest of every flag `aspire serve` was given (files by path, not contents): a later
    `aspire serve --address` with the same flags adopts the running manager."""
    import hashlib
    import json

    def plain(value):  # a set (the flags given) in a stable order: str() of one is not
        return sorted(value) if isinstance(value, (set, frozenset)) else str(value)

    flags = json.dumps(vars(args), sort_keys=True, default=plain)
    return hashlib.sha256(flags.encode()).hexdigest()


def status_table(described: dict) -> str:
    """Models, versions, states, labels and traffic weights as a table; then, per GPU, what is
    reserved and by which version, per node the host RAM reserved and the routers running."""
    from core.units import format_bytes
    from policies.traffic import TrafficSplit, effective_weights

    header = ("MODEL", "VERSION", "STATE", "REPLICAS", "LABELS", "TRAFFIC", "ERROR")
    rows: list[tuple[str, ...]] = [header]
    for name, statuses in described["models"].items():
        labels = described.get("labels", {}).get(name, {})
        split = described.get("traffic", {}).get(name)
        available = {s["version"] for s in statuses if s["state"] == "AVAILABLE"}
        weights = effective_weights(
            TrafficSplit(tuple(map(tuple, split))) if split else None, labels, available
        )
        retries = described.get("retries", {}).get(name, {})
        for s in statuses:
            error = "" if s["error_code"] == "OK" else f"{s['error_code']}: {s['error_message']}"
            retry = retries.get(str(s["version"]))
            if retry is not None and s["state"] == "LOADING":
                error = _retry_cell(retry)
            wait = described.get("capacity_waits", {}).get(name, {}).get(str(s["version"]))
            if wait is not None and s["state"] == "LOADING":
                error = _capacity_cell(wait)
            lost = described.get("missing_replicas", {}).get(name, {}).get(str(s["version"]))
            if lost is not None and s["state"] == "AVAILABLE":
                error = f"{lost['replicas']} replica(s) missing: {lost['reason']}"
            names = ",".join(sorted(label for label, v in labels.items() if v == s["version"]))
            share = f"{weights[s['version']]:.0%}" if s["version"] in weights else ""
            rows.append(
                (
                    name,
                    str(s["version"]),
                    s["state"],
                    _replicas_cell(
                        described.get("placements", {}).get(name, {}).get(str(s["version"]))
                    ),
                    names,
                    share,
                    error,
                )
            )
    lines = _table(rows)
    if described.get("rollouts"):
        from cluster.rollouts import status_lines

        lines += [""] + status_lines(described["rollouts"])
    resources = described.get("resources") or {}
    if resources.get("gpus"):
        rows = [("NODE", "GPU", "TOTAL", "RESERVED", "FREE", "HELD BY")]
        for g in resources["gpus"]:
            holders = ", ".join(f"{k} {format_bytes(v)}" for k, v in g["holders"].items())
            rows.append(
                (
                    g["node"][:12],
                    str(g["index"]),
                    format_bytes(g["total"]),
                    format_bytes(g["reserved"]),
                    format_bytes(g["free"]),
                    holders,
                )
            )
        lines += [""] + _table(rows)
    if resources.get("hosts"):
        rows = [("NODE", "HOST RAM", "RESERVED", "FREE", "RAY CPUS (FREE/FOR REPLICAS)")]
        rows += [
            (
                h["node"][:12],
                format_bytes(h["total"]),
                format_bytes(h["reserved"]),
                format_bytes(h["free"]),
                f"{h['cpus']['free']:g}/{h['cpus']['total']:g}" if "cpus" in h else "",
            )
            for h in resources["hosts"]
        ]
        lines += [""] + _table(rows)
    if described.get("routers"):
        rows = [("NODE", "ADDRESS", "ROUTERS", "RUNNING")]
        rows += [
            (r["node"][:12], r.get("address", ""), r["app"], str(r["running_replicas"] or 0))
            for r in described["routers"]
        ]
        lines += [""] + _table(rows)
    if described.get("shared_hosts"):
        rows = [("SHARED HOST", "NODE", "DEVICE", "BLOCK", "RESERVED", "VERSIONS")]
        for h in described["shared_hosts"]:
            gpu = h["device"] == "gpu"
            rows.append(
                (
                    _host_name(h["app"]),
                    (h["node"] or "")[:12],
                    f"GPU {h['gpu']}" if gpu and h["gpu"] is not None else h["device"].upper(),
                    format_bytes(h["block_vram_bytes"] if gpu else h["block_ram_bytes"]),
                    format_bytes(h["used_vram_bytes"] if gpu else h["used_ram_bytes"]),
                    str(len(h["versions"])),
                )
            )
        lines += [""] + _table(rows)
    return "\n".join(lines)


def _capacity_cell(wait: dict) -> str:
    """A version waiting for the autoscaler: until when, what was asked for, and why."""
    from cluster.capacity import summary

    until = time.strftime("%H:%M:%S", time.localtime(wait["until"]))
    return (
        f"waiting for capacity until {until}, asked the autoscaler for "
        f"{summary(wait['bundles'])}: {wait['reason']}"
    )


def _retry_cell(retry: dict) -> str:
    """A load being retried: `try 2/6 at 12:01:02 after UNAVAILABLE: message`."""
    due = time.strftime("%H:%M:%S", time.localtime(retry["next_try_at"]))
    return (
        f"try {retry['attempt']}/{retry['of']} at {due} after "
        f"{retry['error_code']}: {retry['error_message']}"
    )


def _replicas_cell(placements: list[dict] | None) -> str:
    """RUNNING/RESERVED replicas of a version, with the autoscaling floor where there is one."""
    if not placements:
        return ""
    running = sum(p.get("running_replicas") or 0 for p in placements)
    reserved = sum(p.get("replicas", 0) for p in placements)
    floor = sum(p.get("min_replicas", p.get("replicas", 0)) for p in placements)
    host = placements[0].get("host")
    if host:  # a shared version: its host's replicas
        return f"{running}/{reserved} in {_host_name(host)}"
    return f"{running}/{reserved}" + (f" (min {floor})" if floor != reserved else "")


def _host_name(app: str) -> str:
    from core.names import APP_PREFIX

    return app[len(APP_PREFIX) :] if app.startswith(APP_PREFIX) else app


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns; the last column is not padded (it may be long)."""
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = []
    for r in rows:
        line = "  ".join(f"{c:<{w}}" for c, w in zip(r[:n], widths, strict=True))
        lines.append(f"{line}  {r[n]}" if r[n] else line.rstrip())
    return lines


# How long `aspire status` waits for a Ray that listens at the address to let it in.
STATUS_CONNECT_TIMEOUT_S = 15.0


def find_server(address: str) -> tuple[str | None, str]:
    """(the GCS address `address` names, "") when something listens there, else (None, why).
    Ray's own connect retries an unreachable address for a minute and more, printing warnings,
    and "auto" finds the file of a cluster that stopped long ago; one TCP connect answers
    at once."""
    from core.ray_internals import gcs_address

    try:
        gcs = gcs_address(address)
    except (ConnectionError, ValueError) as exc:
        return None, f"no Aspire server found at --address={address}: {exc}"
    if gcs is None:
        return None, f"no Aspire server found at --address={address}: no Ray cluster is named"
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError as exc:
        return None, f"no Aspire server found at {gcs}: {exc.strerror or exc}"
    return gcs, ""


def status_main(args: argparse.Namespace) -> int:
    # Before Ray is imported (it reads the mode once), for "auto" too: the address is resolved
    # here (find_server), and Ray sends its token on its own only when it resolves "auto" itself
    _use_ray_token_if_present()
    import ray

    from cluster.manager_actor import get_manager
    from core.names import NAMESPACE

    gcs, why = find_server(args.address)
    if gcs is None:
        print(f"aspire status: {why}", file=sys.stderr)
        return 1
    # Something listens there; if it is not a Ray that lets us in (another service, another
    # cluster's token), Ray's connect would retry for minutes: give up after a bound instead.
    connected = threading.Event()

    def give_up() -> None:
        if not connected.wait(STATUS_CONNECT_TIMEOUT_S):
            print(
                f"aspire status: no Aspire server found at {gcs}: no answer in "
                f"{STATUS_CONNECT_TIMEOUT_S:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)  # Ray's connect is still retrying

    threading.Thread(target=give_up, daemon=True).start()
    try:
        # "auto" as such: Ray sends this machine's cluster token only for "auto"
        ray.init(
            address="auto" if args.address == "auto" else gcs,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError as exc:
        print(f"aspire status: no Aspire server found at {gcs}: {exc}", file=sys.stderr)
        return 1
    connected.set()
    try:
        manager = get_manager()
    except ValueError:
        print(
            f"aspire status: no Aspire server found at {gcs}: Ray runs there, Aspire does not",
            file=sys.stderr,
        )
        return 1
    described = ray.get(manager.describe.remote())
    print(status_table(described) if described["models"] else "no models")
    return 0


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        aspire = version("aspire-serving")
    except PackageNotFoundError:
        aspire = "unknown"
    try:
        tensorflow = version("tensorflow")
    except PackageNotFoundError:
        tensorflow = "not installed"
    return f"Aspire ModelServer: {aspire}\nTensorFlow Library: {tensorflow}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    protos.load()  # config files and API protos without TensorFlow's runtime
    logs = CliLogging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    logs.setup()
    if args.version:
        print(version_text())
        return 0
    unknown_arguments(unknown)  # TF Serving names them and starts anyway
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return serve_main(args, logs)
        return status_main(args)
    except FlagError as err:
        print(f"aspire serve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
