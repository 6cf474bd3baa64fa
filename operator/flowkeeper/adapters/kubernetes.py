"""The only place that talks to the Kubernetes API: flow status, Deployment scale, Events, Secrets
read, and the leader-election Lease.

Errors are turned into the classes the controller answers to: a missing object is a configuration
problem of the flow; conflicts, throttling and 5xx are transient and retried on the next pass.
The client is built by the caller and passed in, so nothing talks to a cluster at import time.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import socket
from typing import Any

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from flowkeeper.api import v1alpha1 as api
from flowkeeper.domain.errors import ConfigurationError, FlowkeeperError, TransientError
from flowkeeper.domain.leadership import LeaseRecord
from flowkeeper.observability import metrics

log = logging.getLogger("flowkeeper.kubernetes")


def _classify(exc: ApiException, what: str) -> FlowkeeperError:
    error: FlowkeeperError
    if exc.status == 404:
        error = ConfigurationError(f"{what}: not found", reason="NotFound")
    elif exc.status in (401, 403):
        error = ConfigurationError(f"{what}: forbidden ({exc.reason})", reason="Forbidden")
    else:
        error = TransientError(f"{what}: HTTP {exc.status} {exc.reason}", reason="KubernetesApiError")
    metrics.API_ERRORS.labels(error_class=error.error_class.value, reason=error.reason).inc()
    return error


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


def load_client_config() -> k8s.ApiClient:
    """In-cluster credentials when running in a Pod, else the current kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return k8s.ApiClient()


class KubernetesGateway:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._custom = k8s.CustomObjectsApi(api_client)
        self._apps = k8s.AppsV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self.instance = socket.gethostname()

    def list_objects(self, kind: str, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every IntegrationFlow ("flows") or Deployment ("deployments") in the namespaces (all when
        empty), as plain dicts like watch events carry them."""
        calls = {
            "flows": (
                lambda ns: self._custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL),
                lambda: self._custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL),
            ),
            "deployments": (
                lambda ns: self._apps.list_namespaced_deployment(ns, _preload_content=False),
                lambda: self._apps.list_deployment_for_all_namespaces(_preload_content=False),
            ),
        }
        per_namespace, cluster_wide = calls[kind]
        with _api_errors(f"list {kind}"):
            results = [per_namespace(ns) for ns in namespaces] if namespaces else [cluster_wide()]
        items: list[dict[str, Any]] = []
        for result in results:
            body = json.loads(result.data) if hasattr(result, "data") else result
            items.extend(body.get("items", []))
        return items

    def patch_flow_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patches status; conditions are sent whole (merge-patch replaces lists)."""
        with _api_errors(f"status of IntegrationFlow {namespace}/{name}"):
            self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": status}
            )
            metrics.API_WRITES.labels(kind="status").inc()

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Changes only spec.replicas, through the /scale subresource."""
        with _api_errors(f"scale of Deployment {namespace}/{name}"):
            self._apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})
            metrics.API_WRITES.labels(kind="scale").inc()

    def post_event(self, reference: dict[str, str], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the flow, as `kubectl describe` and `kubectl get events` show them."""
        now = dt.datetime.now(dt.timezone.utc)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{reference['name']}.", namespace=reference["namespace"]),
            involved_object=k8s.V1ObjectReference(
                api_version=reference["apiVersion"],
                kind=reference["kind"],
                name=reference["name"],
                namespace=reference["namespace"],
                uid=reference.get("uid"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=k8s.V1EventSource(component="flowkeeper"),
            reporting_component="flowkeeper.io/operator",
            reporting_instance=self.instance,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            with _api_errors(f"Event on {reference['namespace']}/{reference['name']}"):
                self._core.create_namespaced_event(reference["namespace"], event)
            metrics.API_WRITES.labels(kind="event").inc()
        except FlowkeeperError as exc:
            # An Event that cannot be posted is logged, never allowed to stop the flow's reconciliation.
            log.warning("event not posted: %s", exc, extra={"reason": reason, "flow": reference["name"]})

    def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        with _api_errors(f"Secret {namespace}/{name}"):
            secret = self._core.read_namespaced_secret(name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise ConfigurationError(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretKeyNotFound")
        return base64.b64decode(data).decode()

    def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        try:
            with _api_errors(f"Lease {namespace}/{name}"):
                response = self._coordination.read_namespaced_lease(name, namespace, _preload_content=False)
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
                self._coordination.create_namespaced_lease(namespace, body)
            else:
                self._coordination.replace_namespaced_lease(name, namespace, body)
