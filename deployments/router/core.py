"""The router's protocol-neutral core: what every request needs, whichever API it came in on.

REST (deployments/router/tfs_rest.py) and gRPC (deployments/router/tfs_grpc.py) are thin adapters
around one `RouterCore`, which
1. follows the manager's serving map (a long poll on its own thread; each poll acknowledges the
   epoch applied, which lets the manager delete an unloaded version's deployment only after no
   router can still pick it), held as a typed `ServingMap` swapped by one reference assignment;
2. resolves a request's (name, version, label) to a servable and its `VersionAddress`;
3. calls the version with the request's bytes (`call`: direct path to a replica, Serve's handle
   as the fallback; retry, queue limit, timeout and cancellation semantics); an inference
   request of a model whose rollout runs goes through the rollout's tap (`infer`);
4. asks the manager status and admin questions (`ask_manager`: 503 while it does not answer);
5. records every request in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from core import metrics
from core.contracts import ServingMap, VersionAddress
from core.errors import AspireError, invalid_argument, not_found
from core.metrics_shipper import Shipper
from deployments.router.replica_client import VersionApp
from deployments.router.rollout_tap import OBSERVED_METHODS, RolloutTap
from deployments.wire.direct import decode_answer
from policies.traffic import TrafficSplit, effective_weights, pick, sticky_draw

log = logging.getLogger("aspire.router")

# Status calls take milliseconds; a manager that has not answered in this long is down or
# restarting (docs/reliability.md). Aspire's status and the metrics page gather more.
MANAGER_CALL_S = 5.0
SLOW_MANAGER_CALL_S = 15.0


def resolve(
    serving_map: ServingMap,
    name: str,
    version: int | None,
    label: str | None,
    key: str | None = None,
) -> tuple[int, VersionAddress]:
    """(version, address) of the servable a request names; NOT_FOUND as TF Serving words it.
    Without a version or label: the traffic split if the model has one, else Latest; never the
    candidate of a rollout that has not started while another version serves. A model with a
    sticky experiment draws its arm from the request's `key` value, when it has one."""
    versions = serving_map.models.get(name, {})
    if label is not None:
        labels = serving_map.labels.get(name, {})
        if label not in labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        version = labels[label]
    if version is None:
        if not versions:
            raise not_found(f"Servable not found for request: Latest({name})")
        split = serving_map.traffic.get(name)
        serving: Collection[int] = versions.keys()
        held = serving_map.held_back.get(name)
        if held is not None and held in versions and len(versions) > 1:
            serving = versions.keys() - {held}  # a rollout's candidate before the rollout starts
        if split:  # Aspire's weighted canary traffic for unversioned requests
            weights = effective_weights(
                TrafficSplit(split), serving_map.labels.get(name, {}), set(serving)
            )
            sticky = serving_map.experiments.get(name) if key else None
            draw = sticky_draw(sticky[1], key) if sticky and key else random.random()
            version = pick(weights, draw)
        else:
            version = max(serving)
    elif version not in versions:
        raise not_found(f"Servable not found for request: Specific({name}, {version})")
    return version, versions[version]


@dataclass
class Seen:
    """What a request turned out to be, filled in as it is understood: its metric labels."""

    api: str = ""
    name: str = ""
    version: str = ""


class RouterCore:
    def __init__(self, manager, timeout_s: float | None, data_key: str, router_id: str) -> None:
        self._manager = manager
        self._timeout_s = timeout_s  # --rest_api_timeout_in_ms; None: no limit
        self._data_key = data_key
        self._id = router_id
        recorder = metrics.Recorder()
        self.rollout_tap = RolloutTap(recorder)
        self._shipper = Shipper(
            recorder,
            lambda deltas: ray.get(self._manager.apply_metrics.remote(deltas), timeout=10),
            rollout=self.rollout_tap.drain,
        )
        self.map: ServingMap = ray.get(self._manager.serving_map.remote())
        self._apps: dict[str, VersionApp] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # the ingress loop, once it runs
        self._stop = threading.Event()
        threading.Thread(target=self._follow_serving_map, name="aspire-map", daemon=True).start()

    # ------------------------------------------------------------------------------ serving map
    def _follow_serving_map(self) -> None:
        while not self._stop.is_set():
            try:
                update = ray.get(
                    self._manager.wait_for_serving_map.remote(
                        self.map.epoch, self._id, self.map.poll_s
                    )
                )
                if update is not None:
                    self.map = update  # requests see old or new, never half
                    if self.loop is not None:
                        self.loop.call_soon_threadsafe(self.sync_apps)
            except Exception as exc:  # manager restarting: keep the last map and retry
                log.warning("serving map poll failed: %s", exc)
                self._stop.wait(min(1.0, self.map.poll_s))  # the manager's grace counts on 1 s

    def sync_apps(self) -> None:
        """Open a `VersionApp` for every application in the map and close those no longer in it
        (their versions unloaded). Run on the ingress loop at start and after each map update, so
        a router learns a new version's replicas (and their call ports) before its first request
        rather than on it. Each app keeps the map's current max_queued_requests."""
        wanted = {
            app: address.max_queued_requests
            for versions in self.map.models.values()
            for address in versions.values()
            for app, _ in address.apps
        }
        for app in [a for a in self._apps if a not in wanted]:
            self._apps.pop(app).close()
        for app, max_queued in wanted.items():
            if app in self._apps:
                self._apps[app].max_queued = max_queued
            else:
                self._open_app(app, max_queued)

    def _open_app(self, app_name: str, max_queued_requests: int) -> VersionApp:
        from ray import serve

        app = self._apps[app_name] = VersionApp(
            serve.get_deployment_handle("servable", app_name), self._data_key, max_queued_requests
        )
        return app

    def resolve(
        self, name: str, version: int | None, label: str | None, key: str | None = None
    ) -> tuple[int, VersionAddress]:
        """`resolve` against the current map; `key`: the value of the request's experiment key
        (`experiment_key`), for a model with a sticky experiment."""
        serving_map = self.map
        if version is None and label is None and name in serving_map.experiments:
            self._shipper.recorder.inc(
                metrics.ASPIRE_EXPERIMENT_REQUESTS,
                metrics.labels_for(
                    metrics.ASPIRE_EXPERIMENT_REQUESTS, name, "keyed" if key else "unkeyed"
                ),
            )
        return resolve(serving_map, name, version, label, key)

    def experiment_key(self, name: str) -> str | None:
        """The header or gRPC metadata name whose value assigns `name`'s unversioned requests
        to an arm of its sticky experiment; None when the model has none."""
        experiment = self.map.experiments.get(name)
        return experiment[0] if experiment is not None else None

    def _app(self, address: VersionAddress, exclude: VersionApp | None = None) -> VersionApp:
        """The application of `address` a call goes to: by replica count, among those with a
        replica this router can call (or not known yet), other than `exclude` (the one a
        call's first try lost its replica in) where the version has another. A version whose
        replicas span several nodes thus keeps its calls off the applications of a node that
        died, before the serving map drops them."""
        apps = address.apps
        if len(apps) == 1:
            app_name = apps[0][0]
        else:
            known = self._apps
            candidates = [(a, n) for a, n in apps if known.get(a) is not exclude] or list(apps)
            live = [(a, n) for a, n in candidates if a not in known or known[a].usable()]
            candidates = live or candidates
            app_name = random.choices(
                [a for a, _ in candidates], weights=[n for _, n in candidates]
            )[0]
        app = self._apps.get(app_name)
        # Opened by sync_apps as soon as the map names it; here only if a request won that race.
        return app if app is not None else self._open_app(app_name, address.max_queued_requests)

    # ------------------------------------------------------------------------------ version calls
    async def call(self, address: VersionAddress, method: str, payload: bytes) -> bytes:
        """Run `method` (wire/direct.py REST_METHODS / GRPC_METHODS) on one of the version's
        replicas with the request's bytes; returns the answer's bytes or raises its AspireError.

        1. A replica that dies with the request (killed, crashed, stopping, or replaced after
           failing its health checks) costs no failure: the call is sent once more, to another
           replica or through Serve's handle, which waits for a replacement. Every version call
           is a read of a loaded model, so a second try is safe; there is no third.
        2. While every replica is full and this router already holds the version's
           max_queued_requests, the call is refused at once with 429 (RESOURCE_EXHAUSTED).
        3. Past --rest_api_timeout_in_ms the call is cancelled on the replica and answered 504;
           the replica's TF session stops the run itself (ReplicaOptions.run_timeout_ms). A
           client that goes away (gRPC cancel or deadline) cancels the call on the replica too.
           Whichever of the two clocks fires first, the answer is the same: the session's
           DEADLINE_EXCEEDED ("Timed out waiting for notification", TF's words) is answered
           with the router's message, which names the flag.
        """
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        exclude, lost_in = None, None
        for attempt in (1, 2):
            app = self._app(address, lost_in)
            try:
                link = await app.acquire(deadline, exclude)
            except asyncio.TimeoutError:
                raise self._timed_out() from None
            try:
                if link is None:
                    return decode_answer(
                        await self._handle_call(app, method, payload, deadline, address.key)
                    )
                return await self._direct_call(app, link, method, payload, deadline, address.key)
            except AspireError as err:
                if err.code == "DEADLINE_EXCEEDED" and deadline is not None:
                    raise self._timed_out() from None
                raise
            except _ReplicaLost as lost:
                if attempt == 2:
                    raise AspireError(
                        "The replica serving this request stopped, and so did the "
                        "one it was retried on",
                        "UNAVAILABLE",
                    ) from None
                log.warning("replica lost during a request (%s); retrying once", lost)
                exclude, lost_in = link, app
        raise AssertionError("unreachable")

    async def infer(
        self,
        name: str,
        unversioned: bool,
        version: int,
        address: VersionAddress,
        method: str,
        payload: bytes,
    ) -> bytes:
        """`call` for an inference request: one that named no version or label, of a model
        whose rollout runs, goes through the rollout's tap (deployments/router/rollout_tap.py:
        timed for the judge, copied to the candidate in the shadow phase)."""
        route = self.map.rollouts.get(name) if unversioned else None
        if (
            route is None
            or method not in OBSERVED_METHODS
            or version not in (route.baseline, route.candidate)
        ):
            return await self.call(address, method, payload)
        return await self.rollout_tap.call(self, name, route, version, address, method, payload)

    def _timed_out(self) -> AspireError:
        # Only a router with a timeout times calls out (a deadline exists only then)
        after = "" if self._timeout_s is None else f" after {self._timeout_s * 1000:.0f} ms"
        return AspireError(
            f"Request timed out{after} (--rest_api_timeout_in_ms)", "DEADLINE_EXCEEDED"
        )

    async def _direct_call(
        self,
        app: VersionApp,
        link,
        method: str,
        payload: bytes,
        deadline: float | None,
        key: str = "",
    ) -> bytes:
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            return decode_answer(await link.call(method, payload, left, key.encode("utf-8")))
        except asyncio.TimeoutError:
            raise self._timed_out() from None
        except ConnectionError as err:  # the replica died, stopped or refused: not an answer
            app.failed(link)
            raise _ReplicaLost(str(err)) from None
        finally:
            app.release(link)

    async def _handle_call(
        self, app: VersionApp, method: str, payload: bytes, deadline: float | None, key: str = ""
    ) -> bytes:
        response = app.handle.call.remote(method, payload, key)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(response, left)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timed_out() from None
        except asyncio.CancelledError:  # the client went away (gRPC deadline or cancel)
            response.cancel()
            raise
        except BackPressureError as exc:
            limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
            raise AspireError(
                f"Too many requests for this servable: {limit} already wait for a replica "
                "at this router (max_queued_requests); retry later",
                "RESOURCE_EXHAUSTED",
            ) from None
        except RayActorError as exc:
            raise _ReplicaLost(type(exc).__name__) from None

    def direct_replicas(self) -> dict[str, int]:
        """Replicas of each application this router calls directly (tests, status)."""
        return {name: app.direct_replicas() for name, app in self._apps.items()}

    # ------------------------------------------------------------------------------ manager calls
    async def ask_manager(self, method: str, *args, timeout_s: float = MANAGER_CALL_S):
        """A status or admin call to the manager. While the manager is down or restarting (Ray
        holds calls to a restarting actor until it is back), the caller gets 503 UNAVAILABLE
        after `timeout_s` instead of waiting. Predictions never ask the manager."""
        try:
            return await asyncio.wait_for(getattr(self._manager, method).remote(*args), timeout_s)
        except (asyncio.TimeoutError, RayActorError):
            raise AspireError(
                f"The Aspire manager did not answer within {timeout_s:g} s (it may "
                "be restarting); predictions are not affected; retry later",
                "UNAVAILABLE",
            ) from None
        except Exception as exc:  # a bug in the manager: logged here, never a trace to the client
            log.exception("manager call %s failed", method)
            raise AspireError(f"Internal error: {type(exc).__name__}", "INTERNAL") from None

    # ------------------------------------------------------------------------------ metrics
    def record(self, seen: Seen, protocol: str, code: str, seconds: float) -> None:
        """One request in the metrics: TF Serving's families (request_count for every request,
        request_latency for successes) and Aspire's (by version, API, protocol and code). Models
        this server does not know are labelled `_unknown`, so unknown names add one series."""
        recorder = self._shipper.recorder
        name = seen.name and metrics.model_label(seen.name, self.map.known)
        api = seen.api
        inference = api in ("predict", "classify", "regress")
        if protocol == "rest" or inference:  # TF Serving counts gRPC's inference calls only
            recorder.inc(
                metrics.TFS_REQUEST_COUNT, metrics.labels_for(metrics.TFS_REQUEST_COUNT, name, code)
            )
        if code == "OK" and (protocol == "rest" or inference):
            tf_api = (api.capitalize() if protocol == "grpc" else api) if inference else ""
            recorder.observe(
                metrics.TFS_REQUEST_LATENCY,
                metrics.labels_for(metrics.TFS_REQUEST_LATENCY, name, tf_api, protocol.upper()),
                seconds * 1e6,
            )
        recorder.inc(
            metrics.ASPIRE_REQUESTS,
            metrics.labels_for(metrics.ASPIRE_REQUESTS, name, seen.version, api, protocol, code),
        )
        recorder.observe(
            metrics.ASPIRE_REQUEST_LATENCY,
            metrics.labels_for(metrics.ASPIRE_REQUEST_LATENCY, name, seen.version, api, protocol),
            seconds,
        )

    def stop(self) -> None:
        self._stop.set()
        self._shipper.stop()


class _ReplicaLost(Exception):
    """The replica a call went to is gone (transport failure or Ray actor death): retry once."""
