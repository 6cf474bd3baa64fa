"""Generates the CustomResourceDefinitions (IntegrationFlow, DeadLetterRedrive) from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, no `anyOf` for types, no titles. So the
JSON schema pydantic produces is rewritten here: references inlined, `X | None` turned into plain `X`
(optional fields are simply not required), and our extensions (defaults for sub-objects, CEL rules,
list-map markers) kept. A bounded duration (durations.Within) becomes CEL rules whose messages name the
field's full path, e.g. "spec.scaling.scaleDown.stabilizationWindow must be at most 1h".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from flowkeeper.api import quantities, redrive
from flowkeeper.api import v1alpha1 as api
from flowkeeper.api.durations import BOUNDS_KEY, DURATION_PATTERN, to_seconds

# Keys of pydantic's JSON schema that a structural CRD schema may keep.
_KEPT_KEYS = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
}

# The one union a structural schema allows: an int-or-string (here: resource.Quantity).
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase of the flow."},
    {"name": "Severity", "type": "string", "jsonPath": ".status.severity", "description": "None, P4, P3, P2 or P1."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas", "description": "Consumer replicas now."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas", "description": "Consumer replicas decided."},
    {"name": "Backlog", "type": "number", "jsonPath": ".status.signals.queueDepth", "description": "Messages waiting."},
    {"name": "DLQ", "type": "number", "jsonPath": ".status.signals.deadLetterDepth", "description": "Dead letters waiting."},
    # A column shows one JSONPath, so the scale target's kind and name are two columns (as KEDA does).
    {"name": "Target-Kind", "type": "string", "jsonPath": ".spec.scaleTargetRef.kind", "priority": 1, "description": "Kind of the scale target."},
    {"name": "Target-Name", "type": "string", "jsonPath": ".spec.scaleTargetRef.name", "description": "Name of the scale target."},
    {"name": "Source-System", "type": "string", "jsonPath": ".spec.sourceSystem", "priority": 1, "description": "Source system."},
    {"name": "Target-System", "type": "string", "jsonPath": ".spec.targetSystem", "priority": 1, "description": "Target system."},
    {"name": "Owner", "type": "string", "jsonPath": ".spec.owner", "priority": 1, "description": "Owning team."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


# A number of 7 digits or more before its unit is at least 1000s. Such values may overflow a Go
# duration, and `duration()` then fails every rule; the minimum's rule skips them, so only the
# maximum's message is shown.
_AT_LEAST_1000S = "(^|[a-z])[0-9]{7}"


def _duration_rules(bounds: dict[str, str], path: str) -> list[dict[str, str]]:
    """CEL rules for a bounded duration (durations.Within), each message naming the field's path.
    A value that breaks the pattern is left to the pattern's own error: `duration()` would fail on it."""
    well_formed = f"!self.matches(r'{DURATION_PATTERN}') || "
    low, high = bounds["minimum"], bounds["maximum"]
    rules = [api.cel(f"{well_formed}duration(self) <= duration('{high}')", f"{path} must be at most {high}")]
    if to_seconds(low) > 0:
        assert to_seconds(low) <= 1000, "the minimum's rule takes 7-digit numbers for long enough"
        rule = f"{well_formed}self.matches('{_AT_LEAST_1000S}') || duration(self) >= duration('{low}')"
        rules.insert(0, api.cel(rule, f"{path} must be at least {low}"))
    return rules


def _quantity_rules(bounds: dict[str, str], path: str) -> list[dict[str, str]]:
    """CEL rules for a bounded quantity (quantities.QuantityWithin), each message naming the field's
    path. An int-or-string is a string or an int to CEL; string() makes it one text for quantity(). A
    value that is not a quantity is left to the pattern's own error."""
    value = "quantity(string(self))"
    well_formed = "!isQuantity(string(self)) || "
    low, high = bounds["minimum"], bounds["maximum"]
    return [
        api.cel(f"{well_formed}{value}.compareTo(quantity('{low}')) >= 0", f"{path} must be at least {low}"),
        api.cel(f"{well_formed}{value}.compareTo(quantity('{high}')) <= 0", f"{path} must be at most {high}"),
    ]


def _integer_format(path: str) -> str:
    """Integers are int32 per the API conventions; generations are int64, as metadata.generation is."""
    return "int64" if path.rsplit(".", 1)[-1].lower().endswith("generation") else "int32"


def _structural(node: Any, defs: dict[str, Any], path: str) -> Any:
    """Rewrites one pydantic JSON-schema node, found at `path` (e.g. spec.scaling), into its
    structural CRD form."""
    if isinstance(node, list):
        return [_structural(item, defs, path) for item in node]
    if not isinstance(node, dict):
        return node

    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # The field's own description and default win over the referenced type's.
        target.update(node)
        node = target
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "anyOf" in node and not int_or_string:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"a CRD schema cannot express a union of {variants}")
        merged = dict(variants[0])
        merged.update(node)
        node = _structural(merged, defs, path)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = dict(node.pop("allOf")[0])
        merged.update(node)
        node = _structural(merged, defs, path)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", ...) is None:
        # `None` defaults are pydantic's way of saying optional; the API server needs no default.
        node.pop("default")

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEPT_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs, f"{path}[*]")
        elif key == "additionalProperties":
            # `extra="forbid"` says false; a structural schema refuses unknown fields by pruning or, with
            # kubectl's strict field validation, by an error, and forbids this key next to `properties`.
            continue
        elif key == "description":
            out[key] = " ".join(value.split())
        else:
            out[key] = value
    if int_or_string:
        assert node.get("anyOf") == _INT_OR_STRING, f"{path}: an int-or-string must be exactly integer or string"
        out["anyOf"] = copy.deepcopy(_INT_OR_STRING)
    if out.get("type") == "integer":
        out.setdefault("format", _integer_format(path))
    if BOUNDS_KEY in node:
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *_duration_rules(node[BOUNDS_KEY], path)]
    if quantities.BOUNDS_KEY in node:
        rules = _quantity_rules(node[quantities.BOUNDS_KEY], path)
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *rules]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def schema_of(model: type[api.ApiModel], path: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}), path)


REDRIVE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Flow", "type": "string", "jsonPath": ".spec.flowRef.name", "description": "The IntegrationFlow whose dead letters are redriven."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pending, Blocked, Running, Verifying, Succeeded, Stopped or Failed."},
    {"name": "Moved", "type": "integer", "jsonPath": ".status.moved", "description": "Dead letters moved back to the queue."},
    {"name": "Refailed", "type": "integer", "jsonPath": ".status.refailed", "description": "Moved messages that failed again."},
    {"name": "Remaining", "type": "integer", "jsonPath": ".status.remaining", "description": "Selected dead letters still to move."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Resource:
    """One custom resource of the flowkeeper.io group, as its CRD names it."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[api.ApiModel]  # the whole object: its docstring is the resource's description
    spec: type[api.ApiModel]
    status: type[api.ApiModel]
    columns: tuple[dict[str, Any], ...]
    source: str  # the module the CRD is generated from, for its header

    @property
    def file_name(self) -> str:
        return f"{api.GROUP}_{self.plural}.yaml"


INTEGRATION_FLOW = Resource(
    api.KIND, api.PLURAL, api.SINGULAR, tuple(api.SHORT_NAMES), api.IntegrationFlow, api.IntegrationFlowSpec,
    api.IntegrationFlowStatus, tuple(PRINTER_COLUMNS), "operator/flowkeeper/api/v1alpha1.py",
)
DEAD_LETTER_REDRIVE = Resource(
    redrive.KIND, redrive.PLURAL, redrive.SINGULAR, tuple(redrive.SHORT_NAMES), redrive.DeadLetterRedrive,
    redrive.DeadLetterRedriveSpec, redrive.DeadLetterRedriveStatus, tuple(REDRIVE_PRINTER_COLUMNS), "operator/flowkeeper/api/redrive.py",
)
RESOURCES = (INTEGRATION_FLOW, DEAD_LETTER_REDRIVE)


def openapi_schema(resource: Resource = INTEGRATION_FLOW) -> dict[str, Any]:
    """The openAPIV3Schema of one resource."""
    return {
        "type": "object",
        "description": " ".join((resource.model.__doc__ or "").split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"APIVersion of this object: {api.GROUP}/{api.VERSION}."},
            "kind": {"type": "string", "description": f"Kind of this object: {resource.kind}."},
            "metadata": {"type": "object"},
            "spec": schema_of(resource.spec, "spec"),
            "status": schema_of(resource.status, "status"),
        },
    }


def custom_resource_definition(resource: Resource = INTEGRATION_FLOW) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "flowkeeper", "app.kubernetes.io/part-of": "flowkeeper"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["flowkeeper"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(resource.columns),
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }


def render_yaml(resource: Resource = INTEGRATION_FLOW) -> str:
    header = f"# Generated from {resource.source} by `make crds`. Do not edit by hand.\n"
    return header + yaml.safe_dump(custom_resource_definition(resource), sort_keys=False, width=120)
