"""The DeadLetterRedrive resource and the flow's broker connection at `kubectl apply`, against the real
API server: bad values refused naming the field, the spec immutable, the columns and `kubectl explain`
from the schema."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cluster


def redrive(name: str = "r", **spec) -> str:
    return json.dumps({"apiVersion": "flowkeeper.io/v1alpha1", "kind": "DeadLetterRedrive", "metadata": {"name": name},
                       "spec": {"flowRef": {"name": "orders"}, **spec}})


def flow(source: dict) -> str:
    return json.dumps({"apiVersion": "flowkeeper.io/v1alpha1", "kind": "IntegrationFlow", "metadata": {"name": "orders"},
                       "spec": {"scaleTargetRef": {"name": "orders"}, "source": source}})


REFUSED = [
    (redrive(batchSize=0), "spec.batchSize"),
    (redrive(batchSize=10_001), "spec.batchSize"),
    (redrive(interval="2h"), "spec.interval must be at most 1h"),
    (redrive(causeWindow="10s"), "spec.causeWindow must be at least 1m"),
    (redrive(maxRefailureRatio="1.5"), "spec.maxRefailureRatio must be at most 1"),
    (redrive(maxRefailureRatio="-1"), "spec.maxRefailureRatio must be at least 0"),
    (redrive(classes=["bogus"]), "spec.classes[0]"),
    (redrive(maxMessages=0), "spec.maxMessages"),
    (redrive(flowRef={"name": "Not_A_Name"}), "spec.flowRef.name"),
    (redrive(maxReplicas=0), "spec.maxReplicas"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED, ids=[f for _, f in REFUSED])
def test_bad_redrives_are_refused_naming_the_field(cluster, namespace, body: str, field: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=False)
    assert result.returncode != 0 and field in result.stderr, result.stderr
    assert cluster.kubectl("get", "dlr", "-n", namespace, "-o", "name").stdout == ""


def test_defaults_are_filled_in_and_the_spec_cannot_change(cluster, namespace, kubectl_json) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=redrive())
    spec = kubectl_json("get", "deadletterredrive", "r", "-n", namespace)["spec"]
    assert spec == {"flowRef": {"name": "orders"}, "batchSize": 100, "interval": "5s",
                    "maxRefailureRatio": "0.1", "causeWindow": "5m", "verifyFor": "1m", "dryRun": False}
    changed = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=redrive(batchSize=5), check=False)
    assert changed.returncode != 0 and "spec is immutable" in changed.stderr, changed.stderr


def test_kubectl_get_shows_the_columns_and_explain_the_fields(cluster, namespace) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=redrive())
    header = cluster.kubectl("get", "dlr", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "FLOW", "PHASE", "MOVED", "REFAILED", "REMAINING", "AGE"]
    explained = " ".join(cluster.kubectl("explain", "deadletterredrive.spec.maxRefailureRatio").stdout.split())
    assert "came back to the dead letters" in explained
    explained = " ".join(cluster.kubectl("explain", "integrationflow.status.deadLetters").stdout.split())
    assert "The last review of the dead letters" in explained and "byClass" in explained


CONNECTIONS = [
    ({"broker": "rabbitmq", "queue": "q", "connection": {"address": "kafka:9092"}}, "must be an amqp:// or amqps:// URL"),
    ({"broker": "kafka", "topic": "t", "consumerGroup": "g", "connection": {"address": "amqp://rabbit:5672"}}, "must be host:port"),
    ({"broker": "prometheus", "connection": {"address": "amqp://rabbit:5672"}}, "needs broker rabbitmq or kafka"),
    ({"broker": "rabbitmq", "queue": "q", "connection": {"address": "amqp://guest:guest@rabbit:5672"}}, "spec.source.connection.address"),
]


@pytest.mark.parametrize(("source", "message"), CONNECTIONS, ids=[m for _, m in CONNECTIONS])
def test_a_broker_connection_that_cannot_work_is_refused(cluster, namespace, source: dict, message: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow(source), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_broker_connection_without_credentials_in_the_url_is_taken(cluster, namespace) -> None:
    for source in ({"broker": "rabbitmq", "queue": "q", "deadLetterQueue": "q.dlq", "connection": {"address": "amqps://rabbit.messaging:5671"}},
                   {"broker": "kafka", "topic": "t", "consumerGroup": "g", "deadLetterTopic": "t.dlt",
                    "connection": {"address": "kafka-0:9092,kafka-1:9092", "usernameSecret": {"name": "k", "key": "user"}}}):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=flow(source))
