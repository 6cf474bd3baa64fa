"""The per-flow live values on the operator's /metrics: set when they change, gone with the flow."""

from __future__ import annotations

from flowkeeper.observability import metrics


def sample(name: str, namespace: str, flow: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"namespace": namespace, "flow": flow})


def test_a_flows_values_are_shown_changed_and_removed_with_it() -> None:
    gauges = metrics.FlowGauges()
    gauges.show("u1", "shop", "orders", 3, 420.0)
    assert sample("flowkeeper_flow_desired_replicas", "shop", "orders") == 3
    assert sample("flowkeeper_flow_queue_depth", "shop", "orders") == 420.0

    gauges.show("u1", "shop", "orders", 4, None)  # the backlog could not be read: no series, not 0
    assert sample("flowkeeper_flow_desired_replicas", "shop", "orders") == 4
    assert sample("flowkeeper_flow_queue_depth", "shop", "orders") is None

    gauges.forget({"other"})
    assert sample("flowkeeper_flow_desired_replicas", "shop", "orders") is None


def test_a_flow_created_again_under_another_name_leaves_no_old_series() -> None:
    gauges = metrics.FlowGauges()
    gauges.show("u2", "shop", "old-name", 1, 5.0)
    gauges.show("u2", "shop", "new-name", 1, 5.0)
    assert sample("flowkeeper_flow_desired_replicas", "shop", "old-name") is None
    assert sample("flowkeeper_flow_queue_depth", "shop", "new-name") == 5.0
    gauges.forget()
    assert sample("flowkeeper_flow_queue_depth", "shop", "new-name") is None


def test_forgetting_a_series_never_set_is_harmless() -> None:
    gauges = metrics.FlowGauges()
    gauges.show("u3", "shop", "idle", None, None)
    gauges.forget()
    assert sample("flowkeeper_flow_desired_replicas", "shop", "idle") is None


def test_a_scrape_while_the_loop_changes_the_flows_sees_whole_values_and_never_fails() -> None:
    import threading

    gauges = metrics.FlowGauges()
    stop, failures = threading.Event(), []

    def scrape() -> None:
        while not stop.is_set():
            try:
                for family in metrics.REGISTRY.collect():
                    if family.name == "flowkeeper_flow_desired_replicas":
                        assert all(s.value in (1.0, 2.0) for s in family.samples if s.labels["namespace"] == "busy")
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                failures.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for round_ in range(200):
            for i in range(50):
                gauges.show(f"b{i}", "busy", f"f{i}", 1 + round_ % 2, float(i))
            gauges.forget({f"b{i}" for i in range(0, 50, 2)})
    finally:
        stop.set()
        scraper.join()
    assert failures == []
    assert sample("flowkeeper_flow_desired_replicas", "busy", "f0") == 2.0 and sample("flowkeeper_flow_queue_depth", "busy", "f1") is None
    gauges.forget()
