"""The only place that talks to the Kubernetes API: flow status, Deployment scale, Events, Secrets
read, and the leader-election Lease.

Errors are turned into the classes the controller answers to: a missing object is a configuration
problem of the flow; conflicts, throttling and 5xx are transient and retried on the next pass.
The client is built by the caller and passed in, so nothing talks to a cluster at import time.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
from typing import Any

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
        try:
            results = [per_namespace(ns) for ns in namespaces] if namespaces else [cluster_wide()]
        except ApiException as exc:
            raise _classify(exc, f"list {kind}") from exc
        items: list[dict[str, Any]] = []
        for result in results:
            body = json.loads(result.data) if hasattr(result, "data") else result
            items.extend(body.get("items", []))
        return items

    def patch_flow_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patches status; conditions are sent whole (merge-patch replaces lists)."""
        try:
            self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": status}
            )
            metrics.API_WRITES.labels(kind="status").inc()
        except ApiException as exc:
            raise _classify(exc, f"status of IntegrationFlow {namespace}/{name}") from exc

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Changes only spec.replicas, through the /scale subresource."""
        try:
            self._apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})
            metrics.API_WRITES.labels(kind="scale").inc()
        except ApiException as exc:
            raise _classify(exc, f"scale of Deployment {namespace}/{name}") from exc

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
            self._core.create_namespaced_event(reference["namespace"], event)
            metrics.API_WRITES.labels(kind="event").inc()
        except ApiException as exc:
            # An Event that cannot be posted is logged, never allowed to stop the flow's reconciliation.
            log.warning("event not posted: %s", exc.reason, extra={"reason": reason, "flow": reference["name"]})

    def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            raise _classify(exc, f"Secret {namespace}/{name}") from exc
        data = (secret.data or {}).get(key)
        if data is None:
            raise ConfigurationError(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretKeyNotFound")
        return base64.b64decode(data).decode()

    def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        try:
            response = self._coordination.read_namespaced_lease(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _classify(exc, f"Lease {namespace}/{name}") from exc
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
        try:
            if version is None:
                self._coordination.create_namespaced_lease(namespace, body)
            else:
                self._coordination.replace_namespaced_lease(name, namespace, body)
        except ApiException as exc:
            raise _classify(exc, f"Lease {namespace}/{name}") from exc
