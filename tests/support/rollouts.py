"""The Argo Rollouts resource, served by the real API server without Argo's controller: its
CustomResourceDefinition (the parts Flowkeeper relies on: namespaced, argoproj.io/v1alpha1, the /scale
and /status subresources) and Rollout manifests shaped like Argo's own examples.

Nothing reconciles a Rollout here: no ReplicaSets, no pods, no status. A test that needs a status
writes it through /status itself (`set_rollout_status`).
"""

from __future__ import annotations

import json
from typing import Any

CRD_NAME = "rollouts.argoproj.io"
RESOURCE = "rollouts.argoproj.io"  # for kubectl: never ambiguous with another group's "rollouts"

# Argo's CRD lists its full schema; preserving unknown fields accepts the same Rollouts without
# copying it. replicas and the status fields are typed because the /scale subresource reads them.
ROLLOUT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": "argoproj.io",
        "names": {"kind": "Rollout", "listKind": "RolloutList", "plural": "rollouts", "singular": "rollout", "shortNames": ["ro"]},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1alpha1",
            "served": True,
            "storage": True,
            "subresources": {
                "status": {},
                "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.selector",
                },
            },
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {
                    "spec": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {"replicas": {"type": "integer", "format": "int32"}},
                    },
                    "status": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {
                            "replicas": {"type": "integer", "format": "int32"},
                            "readyReplicas": {"type": "integer", "format": "int32"},
                            "selector": {"type": "string"},
                        },
                    },
                },
            }},
        }],
    },
}


def rollout_manifest(name: str, replicas: int, containers: list[dict[str, Any]] | None = None) -> str:
    """A canary Rollout as Argo's documentation writes them (strategy, selector, pod template)."""
    labels = {"app": name}
    containers = containers or [{
        "name": "consumer",
        "image": "example/consumer:1",
        "resources": {"requests": {"memory": "32Mi", "cpu": "5m"}},
    }]
    return json.dumps({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": labels},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": containers},
            },
        },
    })


def set_rollout_status(cluster, namespace: str, name: str, replicas: int, ready: int) -> None:
    """What Argo's controller would report (no controller runs here)."""
    status = {"replicas": replicas, "readyReplicas": ready, "selector": f"app={name}"}
    cluster.kubectl(
        "patch", RESOURCE, name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )


def rollout_replicaset_manifest(rollout: dict[str, Any], pod_hash: str) -> str:
    """The ReplicaSet Argo's controller makes for a Rollout (`rollout`: the Rollout as the API server
    returns it, for its uid): the Rollout's pod template under the `rollouts-pod-template-hash`
    label, owned by the Rollout as its controller. The ReplicaSet controller then makes its pods."""
    name, spec = rollout["metadata"]["name"], rollout["spec"]
    labels = {**spec["selector"]["matchLabels"], "rollouts-pod-template-hash": pod_hash}
    template = json.loads(json.dumps(spec["template"]))
    template["metadata"] = {**template.get("metadata", {}), "labels": {**template.get("metadata", {}).get("labels", {}), **labels}}
    owner = {
        "apiVersion": rollout["apiVersion"], "kind": "Rollout", "name": name, "uid": rollout["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": f"{name}-{pod_hash}", "labels": labels, "ownerReferences": [owner]},
        "spec": {"replicas": spec["replicas"], "selector": {"matchLabels": labels}, "template": template},
    })
