"""Times when Deployments' spec.replicas change, from one watch of the API server (no polling: the
API requests a run counts stay the systems' own, and 100 Deployments are timed at once)."""

from __future__ import annotations

import json
import threading
import time

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import LocalCluster

WATCH_SECONDS = 300  # one watch request's length; the next one resumes where it ended


class DeploymentWatch:
    """Every (monotonic time, spec.replicas) seen per Deployment of `namespace` since start()."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.kubeconfig = str(cluster.kubeconfig_path)
        self.namespace = namespace
        self.events: dict[str, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._response = None
        self._api: client.AppsV1Api | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0  # watches that had to start from a fresh listing (410 Gone): a gap's changes are seen late

    def start(self) -> DeploymentWatch:
        # The client is made here, so that a bad kubeconfig fails the run at once, not its waits.
        self._api = client.AppsV1Api(config.new_client_from_config(config_file=self.kubeconfig))
        self._thread = threading.Thread(target=self._read, name="deployment-watch", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        # Each watch resumes from the last resourceVersion seen, so a watch the API server ends (its
        # timeout, or a burst it thinks we are too slow for) loses no change. (`kubectl get --watch`
        # ended during a burst of 1,000 scales, and its fresh listing timed those flows 20 s late.)
        api = self._api
        version: str | None = None
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list(api)
                self._response = api.list_namespaced_deployment(
                    self.namespace, watch=True, resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS, _preload_content=False,
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

    def _list(self, api: client.AppsV1Api) -> str:
        listing = json.loads(api.list_namespaced_deployment(self.namespace, _preload_content=False).data)
        for item in listing["items"]:
            self._seen(item)
        return listing["metadata"]["resourceVersion"]

    def _seen(self, deployment: dict) -> None:
        replicas = deployment.get("spec", {}).get("replicas")
        if isinstance(replicas, int):
            with self._lock:
                self.events.setdefault(deployment["metadata"]["name"], []).append((time.monotonic(), replicas))

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
        while time.monotonic() < deadline:
            if all(self.first_scale_up(name, t) is not None for name, t in started.items()):
                break
            time.sleep(0.05)
        result = {}
        for name, t in started.items():
            at = self.first_scale_up(name, t)
            result[name] = None if at is None else round(at - t, 2)
        return result

    def stop(self) -> None:
        self._stopped.set()
        if self._response is not None:
            self._response.close()  # ends the blocking read
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DeploymentWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
