"""How `make test` shares the suite among pytest-xdist workers (`--dist loadgroup`).

A worker runs whole groups. Every test module is a group of its own, so its module fixtures start once.
The tests that need root's real node or build images are one group ("real-node"): they share one
real-node cluster and one image store, and a second real node per run would only add start-ups. The
Kafka tests are one group for their broker. Groups are handed out in collection order, so the long
groups are put first: a worker that takes them early is not the one everyone waits for at the end.
"""

from __future__ import annotations

import pytest

REAL_NODE_GROUP = "real-node"
KAFKA_GROUP = "kafka"
# Lower runs first: the real-node group is the longest (images, the operator in the cluster, the
# end-to-end run), then Kafka's broker, then the modules that start operators against a cluster.
_ORDER = {REAL_NODE_GROUP: 0, KAFKA_GROUP: 1}
_CLUSTER_MODULES = 2
_OTHER_MODULES = 3


def group_of(item: pytest.Item) -> str:
    if item.get_closest_marker("real_node") or item.get_closest_marker("images"):
        return REAL_NODE_GROUP
    if item.get_closest_marker("kafka"):
        return KAFKA_GROUP
    return item.nodeid.split("::", 1)[0]


def _rank(item: pytest.Item, group: str) -> int:
    if group in _ORDER:
        return _ORDER[group]
    return _CLUSTER_MODULES if item.get_closest_marker("cluster") else _OTHER_MODULES


@pytest.hookimpl(tryfirst=True)  # before xdist turns the xdist_group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {}
    for item in items:
        groups[item] = group_of(item)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    # A stable sort: within a rank the collection order (and so each group's own order) stays.
    items.sort(key=lambda item: _rank(item, groups[item]))
