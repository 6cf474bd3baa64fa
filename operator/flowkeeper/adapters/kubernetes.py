"""The only place that talks to the Kubernetes API: flow status, the scale of scale targets
(Deployments, StatefulSets, Argo Rollouts), Events, Secrets read, and the leader-election Lease.

Errors are turned into the classes the controller answers to: a missing object is a configuration
problem of the flow; a conflict (409) says the object changed since it was read (re-plan); a refused
body (422) is permanent; throttling and 5xx are transient and retried with backoff. Every call has a
request timeout: a half-open connection must not hang a pass or keep the elector a standby forever.
Every write names the field manager `flowkeeper`, so managedFields tell its writes from others'.
The client is built by the caller and passed in, so nothing talks to a cluster at import time.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flowkeeper.api import redrive as redrive_api
from flowkeeper.api import v1alpha1 as api
from flowkeeper.domain.errors import ConfigurationError, ConflictError, FlowkeeperError, RejectedError, TransientError
from flowkeeper.domain.flow import FIELD_MANAGER, ScaleTarget
from flowkeeper.domain.leadership import LeaseRecord
from flowkeeper.observability import metrics

log = logging.getLogger("flowkeeper.kubernetes")


def _classify(exc: ApiException, what: str) -> FlowkeeperError:
    error: FlowkeeperError
    if exc.status == 404:
        error = ConfigurationError(f"{what}: not found", reason="NotFound")
    elif exc.status in (401, 403):
        error = ConfigurationError(f"{what}: forbidden ({exc.reason})", reason="Forbidden")
    elif exc.status == 409:
        error = ConflictError(f"{what}: changed since it was read", reason="Conflict")
    elif exc.status in (400, 422):
        error = RejectedError(f"{what}: refused by the API server (HTTP {exc.status}): {_api_message(exc)}", reason="Invalid")
    else:
        error = TransientError(f"{what}: HTTP {exc.status} {exc.reason}", reason="KubernetesApiError")
    metrics.API_ERRORS.labels(error_class=error.error_class.value, reason=error.reason).inc()
    return error


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return ""


@contextlib.contextmanager
def _api_errors(what: str):
    """Every call goes through here: HTTP errors become their class (_classify), and an API server
    that cannot be reached (refused, reset, timed out, TLS) is transient, never an exception that
    escapes into the loop."""
    try:
        yield
    except ApiException as exc:
        raise _classify(exc, what) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        error = TransientError(f"{what}: API server unreachable ({type(exc).__name__})", reason="KubernetesUnreachable")
        metrics.API_ERRORS.labels(error_class=error.error_class.value, reason=error.reason).inc()
        raise error from exc


LIST_PAGE = 500  # objects per page of a LIST


def _at_version(body: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    """A patch the API server applies only while the object is at `resource_version` (else 409)."""
    return {**body, "metadata": {"resourceVersion": resource_version}} if resource_version else body


@dataclass
class Listing:
    """The objects of a LIST, and the resourceVersion of each list made (by namespace; None when
    cluster-wide): what a list does not hold but the store does, at or before that version, is gone."""

    items: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str | None, str] = field(default_factory=dict)


def load_client_config(connections: int = 10) -> k8s.ApiClient:
    """In-cluster credentials when running in a Pod, else the current kubeconfig. `connections`: the
    HTTP connections kept open to the API server; fewer than the threads that call it at once and
    every extra call opens (and TLS-handshakes) a new one, then throws it away."""
    from kubernetes import config

    configuration = k8s.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    return k8s.ApiClient(configuration)


class KubernetesGateway:
    def __init__(self, api_client: k8s.ApiClient, request_timeout: float = 30.0, list_page: int = LIST_PAGE) -> None:
        self._list_page = list_page
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self.instance = socket.gethostname()
        # (connect, read) seconds for every call; a LIST of thousands of objects gets the read part.
        self._timeout = (min(5.0, request_timeout), request_timeout)

    def list_objects(self, kind: str, namespaces: tuple[str, ...], keep: Callable[[dict[str, Any]], Any] | None = None) -> Listing:
        """Every IntegrationFlow ("flows") or scale target of one kind (its plural: "deployments",
        "statefulsets", "rollouts") in the namespaces (all when empty), as plain dicts like watch
        events carry them, with each list's resourceVersion. LIST items carry no kind: the caller knows it.
        `keep` makes what the listing holds of each object as its page arrives: ten thousand
        Deployments are then never ten thousand bodies in memory at once, only what is kept of them."""
        if kind == "flows":
            group, api_version, plural = api.GROUP, api.VERSION, api.PLURAL
        elif kind == "redrives":
            group, api_version, plural = api.GROUP, api.VERSION, redrive_api.PLURAL
        else:
            target = next(k for k in api.SCALE_TARGET_KINDS if k.plural == kind)
            group, api_version, plural = target.group, target.version, target.plural
        listing = Listing()
        # The custom-objects client serves any group's resources, apps/v1 included: one code path.
        with _api_errors(f"list {kind}"):
            for namespace in namespaces or (None,):
                items, version = self._list_pages(group, api_version, plural, namespace, keep)
                listing.items.extend(items)
                listing.versions[namespace] = version
        return listing

    def _list_pages(
        self, group: str, api_version: str, plural: str, namespace: str | None, keep: Callable[[dict[str, Any]], Any] | None
    ) -> tuple[list[Any], str]:
        """One consistent LIST in pages of `list_page` objects, so that no response of the API server
        holds ten thousand objects at once, and the listing's resourceVersion. A continue token that
        expired (410: the snapshot was compacted meanwhile) starts the listing again."""
        while True:
            items: list[Any] = []
            version_seen, token = "", ""
            try:
                while True:
                    options: dict[str, Any] = {"limit": self._list_page, "_request_timeout": self._timeout}
                    if token:
                        options["_continue"] = token
                    if namespace:
                        body = self._custom.list_namespaced_custom_object(group, api_version, namespace, plural, **options)
                    else:
                        body = self._custom.list_cluster_custom_object(group, api_version, plural, **options)
                    metadata = body.get("metadata") or {}
                    items.extend(body.get("items", []) if keep is None else map(keep, body.get("items", [])))
                    version_seen = version_seen or str(metadata.get("resourceVersion") or "")
                    token = metadata.get("continue") or ""
                    if not token:
                        return items, version_seen
            except ApiException as exc:
                if exc.status != 410 or not token:
                    raise
                log.info("listing expired between pages, listing again", extra={"stage": "list", "kind": plural})

    def patch_flow_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        """Merge-patches status at `resource_version` (a 409 when the flow changed since it was read);
        conditions are sent whole (merge-patch replaces lists). Returns the flow as stored."""
        return self._patch_status(api.PLURAL, api.KIND, namespace, name, status, resource_version)

    def patch_redrive_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        """As patch_flow_status, for a DeadLetterRedrive."""
        return self._patch_status(redrive_api.PLURAL, redrive_api.KIND, namespace, name, status, resource_version)

    def _patch_status(self, plural: str, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        body = _at_version({"status": status}, resource_version)
        with _api_errors(f"status of {kind} {namespace}/{name}"):
            stored = self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, plural, name, body,
                field_manager=FIELD_MANAGER, _request_timeout=self._timeout,
            )
        metrics.API_WRITES.labels(kind="status").inc()
        return stored

    def scale(self, target: ScaleTarget, replicas: int, resource_version: str | None) -> tuple[int, str]:
        """Changes only spec.replicas, through the target's /scale subresource, at `resource_version`
        (a 409 when someone else changed the target since it was read). The custom-objects client
        speaks the /scale URL of any group (apps/v1 has the same shape), so every kind takes this one
        path. Returns (spec.replicas, resourceVersion)."""
        body = _at_version({"spec": {"replicas": replicas}}, resource_version)
        with _api_errors(f"scale of {target.plural} {target.namespace}/{target.name}"):
            stored = self._custom.patch_namespaced_custom_object_scale(
                target.group, target.version, target.namespace, target.plural, target.name, body,
                field_manager=FIELD_MANAGER, _request_timeout=self._timeout,
            )
        metrics.API_WRITES.labels(kind="scale").inc()
        return int(stored.get("spec", {}).get("replicas") or 0), str(stored["metadata"].get("resourceVersion", ""))

    def create_event(self, event: dict[str, Any]) -> str:
        """Posts a core/v1 Event (as `kubectl describe` and `kubectl get events` show them); returns its name."""
        namespace = event["metadata"]["namespace"]
        try:
            body = k8s.CoreV1Event.from_dict(event)
        except ValueError as exc:  # the client validates the body before sending it
            raise RejectedError(f"Event in {namespace}: not a valid Event ({exc})", reason="Invalid") from exc
        with _api_errors(f"Event in {namespace}"):
            response = self._core.create_namespaced_event(
                namespace, body, field_manager=FIELD_MANAGER, _preload_content=False, _request_timeout=self._timeout
            )
        metrics.API_WRITES.labels(kind="event").inc()
        return str(json.loads(response.data)["metadata"]["name"])

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Counts a repeat on an existing Event (count, lastTimestamp), as client-go's recorder does."""
        with _api_errors(f"Event {namespace}/{name}"):
            self._core.patch_namespaced_event(
                name, namespace, patch, field_manager=FIELD_MANAGER, _preload_content=False, _request_timeout=self._timeout
            )
        metrics.API_WRITES.labels(kind="event").inc()

    def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        with _api_errors(f"Secret {namespace}/{name}"):
            secret = self._core.read_namespaced_secret(name, namespace, _request_timeout=self._timeout)
        data = (secret.data or {}).get(key)
        if data is None:
            raise ConfigurationError(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretKeyNotFound")
        return base64.b64decode(data).decode()

    def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        try:
            with _api_errors(f"Lease {namespace}/{name}"):
                response = self._coordination.read_namespaced_lease(name, namespace, _preload_content=False, _request_timeout=self._timeout)
        except ConfigurationError as exc:
            if exc.reason == "NotFound":
                return None  # not created yet: the first replica creates it
            raise
        lease = json.loads(response.data)
        spec = lease.get("spec") or {}
        return LeaseRecord(
            holder=spec.get("holderIdentity"),
            renew_time=spec.get("renewTime"),
            acquire_time=spec.get("acquireTime"),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            version=lease["metadata"].get("resourceVersion"),
        )

    def write_lease(self, namespace: str, name: str, spec: dict[str, Any], version: str | None) -> None:
        """Creates the Lease (version None) or replaces it at `version`: a replica that lost a race
        gets a conflict, never a silent overwrite. renewTime, and acquireTime when unset, are now."""
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, **({"resourceVersion": version} if version else {})},
            "spec": {**spec, "acquireTime": spec.get("acquireTime") or now, "renewTime": now},
        }
        with _api_errors(f"Lease {namespace}/{name}"):
            if version is None:
                self._coordination.create_namespaced_lease(namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout)
            else:
                self._coordination.replace_namespaced_lease(name, namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout)
