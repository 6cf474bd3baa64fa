"""The CRD in crds/ is generated from the pydantic models; these tests keep the two, and the chart's
copy once it exists, from drifting, and check the schema is one the API server accepts (structural)."""

from __future__ import annotations

from typing import Any

import yaml

import pytest

from flowkeeper.api.crd import RESOURCES, Resource, custom_resource_definition, render_yaml
from tests.support.cluster import REPO


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_committed_crd_matches_the_models(resource: Resource) -> None:
    assert (REPO / "crds" / resource.file_name).read_text() == render_yaml(resource), "crds/ is stale: run `make crds`"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural(resource: Resource) -> None:
    schema = custom_resource_definition(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        # The one union a structural schema allows: an int-or-string (the quantities).
        if "anyOf" in node:
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and node["x-kubernetes-int-or-string"] is True, path
            assert "type" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path


def test_every_spec_field_is_documented() -> None:
    spec = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undocumented = [
        path
        for path, node in _walk(spec)
        if path.count(".properties.") and path.rsplit(".", 2)[-2] == "properties" and not node.get("description")
    ]
    assert undocumented == []


def test_sub_objects_default_so_the_api_server_fills_in_their_fields() -> None:
    spec = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["metrics"]["default"] == {}
    assert spec["properties"]["scaling"]["default"]["minReplicas"] == 1
    assert spec["properties"]["health"]["default"]["errorRatio"] == "0.01"  # a quantity: a string
    assert spec["properties"]["scaling"]["properties"]["scaleDown"]["properties"]["stabilizationWindow"]["default"] == "5m"


def test_printer_columns_cover_what_operators_look_at() -> None:
    columns = custom_resource_definition()["spec"]["versions"][0]["additionalPrinterColumns"]
    names = {c["name"]: c for c in columns}
    for name in ("Phase", "Severity", "Replicas", "Desired", "Backlog", "DLQ", "Age"):
        assert name in names and names[name].get("priority", 0) == 0
    assert names["Target-Name"].get("priority", 0) == 0 and names["Target-Name"]["jsonPath"] == ".spec.scaleTargetRef.name"
    assert names["Target-Kind"]["priority"] == 1 and names["Target-Kind"]["jsonPath"] == ".spec.scaleTargetRef.kind"
    assert names["Source-System"]["priority"] == 1 and names["Target-System"]["priority"] == 1


def test_every_integer_has_its_format() -> None:
    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    integers = {path: node.get("format") for path, node in _walk(schema) if node.get("type") == "integer" and not path.endswith("anyOf[0]")}
    assert integers and all(fmt in ("int32", "int64") for fmt in integers.values()), integers
    generations = {path: fmt for path, fmt in integers.items() if path.lower().endswith("generation")}
    assert generations and set(generations.values()) == {"int64"}
    assert integers[".properties.spec.properties.scaling.properties.maxReplicas"] == "int32"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_rendered_yaml_parses_back(resource: Resource) -> None:
    assert yaml.safe_load(render_yaml(resource)) == custom_resource_definition(resource)
