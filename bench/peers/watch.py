"""Times when objects change, from one watch of the API server (no polling: the API requests a run
counts stay the systems' own, and ten thousand objects are timed at once): Deployments' spec.replicas
(DeploymentWatch) and IntegrationFlows' status (FlowStatusWatch)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import LocalCluster

WATCH_SECONDS = 300  # one watch request's length; the next one resumes where it ended


class ObjectWatch:
    """Every (monotonic time, state) seen per object of `namespace` since start(); `state_of` says
    what of a body counts (None: nothing to record)."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.kubeconfig = str(cluster.kubeconfig_path)
        self.namespace = namespace
        self.events: dict[str, list[tuple[float, Any]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._response = None
        self._api_client: client.ApiClient | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0  # watches that had to start from a fresh listing (410 Gone): a gap's changes are seen late

    def list_call(self, api_client: client.ApiClient) -> Callable[..., Any]:
        """The namespaced list function of the watched kind (watch=True makes it a watch)."""
        raise NotImplementedError

    def state_of(self, body: dict) -> Any:
        raise NotImplementedError

    def start(self):
        # The client is made here, so that a bad kubeconfig fails the run at once, not its waits.
        self._api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self._thread = threading.Thread(target=self._read, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        # Each watch resumes from the last resourceVersion seen, so a watch the API server ends (its
        # timeout, or a burst it thinks we are too slow for) loses no change. (`kubectl get --watch`
        # ended during a burst of 1,000 scales, and its fresh listing timed those flows 20 s late.)
        list_call = self.list_call(self._api_client)
        version: str | None = None
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list(list_call)
                self._response = list_call(
                    watch=True, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS, _preload_content=False,
                )
                try:
                    for line in self._response:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            if event["object"].get("code") == 410:  # too old a version to resume from: list again
                                version = None
                                self.restarts += 1
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._seen(event["object"])
                finally:
                    self._response.close()
            except ApiException as exc:
                if exc.status == 410:
                    version, self.restarts = None, self.restarts + 1
                elif not self._stopped.is_set():
                    time.sleep(0.2)
            except Exception:  # noqa: BLE001 - a broken stream: watch again from the last version
                if not self._stopped.is_set():
                    time.sleep(0.2)

    def _list(self, list_call: Callable[..., Any]) -> str:
        listing = json.loads(list_call(_preload_content=False).data)
        for item in listing["items"]:
            self._seen(item)
        return listing["metadata"]["resourceVersion"]

    def _seen(self, body: dict) -> None:
        state = self.state_of(body)
        if state is not None:
            with self._lock:
                self.events.setdefault(body["metadata"]["name"], []).append((time.monotonic(), state))

    def stop(self) -> None:
        self._stopped.set()
        if self._response is not None:
            self._response.close()  # ends the blocking read
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FlowStatusWatch(ObjectWatch):
    """(observedGeneration, desiredReplicas, readyReplicas) of each IntegrationFlow's status, as text
    ("" when unset)."""

    def list_call(self, api_client: client.ApiClient) -> Callable[..., Any]:
        api = client.CustomObjectsApi(api_client)
        return lambda **options: api.list_namespaced_custom_object("flowkeeper.io", "v1alpha1", self.namespace, "integrationflows", **options)

    def state_of(self, body: dict) -> tuple[str, str, str]:
        status = body.get("status") or {}
        return tuple("" if status.get(key) is None else str(status[key]) for key in ("observedGeneration", "desiredReplicas", "readyReplicas"))

    def wait_all(self, n: int, done: Callable[[tuple[str, str, str]], bool], what: str, timeout: float = 1800) -> float:
        """Waits until `done` holds for the last state of all n flows; returns the monotonic time since
        which it has held for every one of them (the latest start of each flow's last run of states
        that satisfy it), as the watch saw them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            since = self._all_since(n, done)
            if since is not None:
                return since
            time.sleep(1.0)
        raise TimeoutError(f"{self.namespace}: not every flow {what} within {timeout}s")

    def _all_since(self, n: int, done: Callable[[tuple[str, str, str]], bool]) -> float | None:
        with self._lock:
            if len(self.events) < n:
                return None
            latest = 0.0
            for history in self.events.values():
                since = None
                for at, state in history:
                    since = (since if since is not None else at) if done(state) else None
                if since is None:
                    return None
                latest = max(latest, since)
            return latest


class DeploymentWatch(ObjectWatch):
    """Every (monotonic time, spec.replicas) seen per Deployment."""

    def list_call(self, api_client: client.ApiClient) -> Callable[..., Any]:
        api = client.AppsV1Api(api_client)
        return lambda **options: api.list_namespaced_deployment(self.namespace, **options)

    def state_of(self, body: dict) -> int | None:
        replicas = body.get("spec", {}).get("replicas")
        return replicas if isinstance(replicas, int) else None

    def first_scale_up(self, name: str, after: float) -> float | None:
        """The first time after `after` that `name` was seen with more than one replica."""
        with self._lock:
            for at, replicas in self.events.get(name, ()):
                if at >= after and replicas > 1:
                    return at
        return None

    def scaled_down_after(self, after: float) -> set[str]:
        """The Deployments whose spec.replicas went down at some point after `after`."""
        lowered = set()
        with self._lock:
            for name, seen in self.events.items():
                previous = None
                for at, replicas in seen:
                    if previous is not None and at >= after and replicas < previous:
                        lowered.add(name)
                    previous = replicas
        return lowered

    def wait_scaled(self, started: dict[str, float], timeout: float) -> dict[str, float | None]:
        """Seconds from started[name] to that Deployment's first scale-up, for each name; None for
        those not scaled within `timeout` of the last start."""
        deadline = max(started.values()) + timeout
        # Only the Deployments not seen scaled yet are looked at again: the times are the watch
        # thread's, taken as events arrive, and a waiter scanning a thousand histories every 50 ms
        # competes with that thread for the GIL and the lock.
        pending = dict(started)
        while pending and time.monotonic() < deadline:
            pending = {name: t for name, t in pending.items() if self.first_scale_up(name, t) is None}
            time.sleep(0.05)
        result = {}
        for name, t in started.items():
            at = self.first_scale_up(name, t)
            result[name] = None if at is None else round(at - t, 2)
        return result
