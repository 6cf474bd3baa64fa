"""The `flowkeeper` command: `flowkeeper run` runs the operator, `flowkeeper crd` prints the CRD."""

from __future__ import annotations

import socket

import click


def _base_urls(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    # The variable holds a comma-separated list; each entry must be a base URL the pass can compare.
    from flowkeeper.adapters.prometheus.servers import base_url

    urls = tuple(url.strip() for value in values for url in value.split(",") if url.strip())
    bad = [url for url in urls if base_url(url) is None]
    if bad:
        raise click.BadParameter(f"not http(s) base URLs: {', '.join(bad)}")
    return urls


def _selector(ctx: click.Context, param: click.Parameter, value: str):
    from flowkeeper.domain.selector import SelectorError, parse

    try:
        return parse(value or "")
    except SelectorError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group()
def main() -> None:
    """Flowkeeper keeps integration flows healthy: it scales queue consumers from Prometheus signals,
    pauses flows whose configuration is broken, and records their health on the IntegrationFlow."""


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Namespace to watch (repeatable). Default: all.")
@click.option(
    "-l", "--selector", callback=_selector, envvar="FLOWKEEPER_SELECTOR", default="",
    help="Serve only the IntegrationFlows whose labels match this selector (kubectl -l syntax): one shard of a large "
    "install. Default: every flow.",
)
@click.option("--standalone", is_flag=True, help="No leader election: this replica always acts (one replica, or tests).")
@click.option("--lease-name", default="flowkeeper", show_default=True, help="Lease that elects the active replica.")
@click.option("--lease-namespace", envvar="POD_NAMESPACE", default="default", show_default=True, help="Namespace of the Lease (default: $POD_NAMESPACE).")
@click.option("--identity", envvar="POD_NAME", default=None, help="This replica's name in the Lease (default: $POD_NAME, else the host name).")
@click.option("--lease-duration", type=click.IntRange(2, 300), default=15, show_default=True, help="Seconds a standby waits after the leader's last renewal.")
@click.option("--liveness", "liveness_endpoint", default=None, help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz.")
@click.option("--log-format", type=click.Choice(["json", "plain"]), default="json", show_default=True)
@click.option("--metrics-port", type=int, default=8080, show_default=True, envvar="FLOWKEEPER_METRICS_PORT", help="Port of the operator's own /metrics; 0 disables it.")
@click.option("--prometheus-url", envvar="FLOWKEEPER_PROMETHEUS_URL", help="Prometheus to read flow signals from. Unset: only readiness is checked.")
@click.option("--prometheus-bearer-token-file", envvar="FLOWKEEPER_PROMETHEUS_BEARER_TOKEN_FILE", help="File with a bearer token for Prometheus.")
@click.option("--prometheus-ca-file", envvar="FLOWKEEPER_PROMETHEUS_CA_FILE", help="CA bundle (PEM) to verify Prometheus' TLS certificate.")
@click.option(
    "--prometheus-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, envvar="FLOWKEEPER_PROMETHEUS_TIMEOUT",
    help="Seconds for one query's whole answer (Prometheus is asked to give up a little earlier).",
)
@click.option(
    "--prometheus-pass-timeout", type=click.FloatRange(min=0.1), default=None, envvar="FLOWKEEPER_PROMETHEUS_PASS_TIMEOUT",
    help="Seconds for all queries of one signals pass; queries not asked by then are reported unread. Default: 3x --prometheus-timeout.",
)
@click.option(
    "--allowed-prometheus-server", "allowed_prometheus_servers", multiple=True, callback=_base_urls,
    envvar="FLOWKEEPER_ALLOWED_PROMETHEUS_SERVERS",
    help="A Prometheus base URL flows may name in spec.metrics.server, besides --prometheus-url (repeatable; "
    "the variable takes a comma-separated list). Default: none.",
)
@click.option(
    "--allow-metrics-overrides", is_flag=True, envvar="FLOWKEEPER_ALLOW_METRICS_OVERRIDES",
    help="Let flows run their own PromQL (spec.metrics.<signal>) with the operator's Prometheus credentials.",
)
@click.option("--rate-window", default="1m", show_default=True, envvar="FLOWKEEPER_RATE_WINDOW", help="Window of rate() in the preset queries.")
@click.option("--request-timeout", type=click.FloatRange(1, 300), default=30.0, show_default=True, envvar="FLOWKEEPER_REQUEST_TIMEOUT", help="Seconds for every Kubernetes API call.")
@click.option(
    "--loop-stall-seconds", type=click.FloatRange(5, 3600), default=180.0, show_default=True, envvar="FLOWKEEPER_LOOP_STALL_SECONDS",
    help="Seconds without a completed pass of the loop after which --liveness fails (the loop is stuck, not slow).",
)
@click.option("--conflict-hold-off", type=click.FloatRange(1, 3600), default=300.0, show_default=True, envvar="FLOWKEEPER_CONFLICT_HOLD_OFF", help="Seconds Flowkeeper leaves replicas alone after another writer changed them (doubles while it goes on, up to 1h).")
@click.option("--write-qps", type=click.FloatRange(1, 10000), default=200.0, show_default=True, envvar="FLOWKEEPER_WRITE_QPS", help="Client-side limit of Kubernetes API writes per second.")
@click.option("--write-burst", type=click.IntRange(1, 10000), default=400, show_default=True, envvar="FLOWKEEPER_WRITE_BURST", help="Writes allowed at once above --write-qps.")
@click.option("--write-concurrency", type=click.IntRange(1, 256), default=64, show_default=True, envvar="FLOWKEEPER_WRITE_CONCURRENCY", help="Flows written to the API server at once.")
@click.option(
    "--watch-rollouts", is_flag=True, envvar="FLOWKEEPER_WATCH_ROLLOUTS",
    help="Also watch and scale Argo Rollouts (argoproj.io/v1alpha1); needs their CRD installed.",
)
@click.option(
    "--dead-letter-review-interval", type=click.FloatRange(5, 3600), default=60.0, show_default=True, envvar="FLOWKEEPER_DEAD_LETTER_REVIEW_INTERVAL",
    help="Seconds between two reviews of a flow's dead letters (flows with spec.source.connection).",
)
@click.option(
    "--dead-letter-review-limit", type=click.IntRange(1, 65535), default=10_000, show_default=True, envvar="FLOWKEEPER_DEAD_LETTER_REVIEW_LIMIT",
    help="Dead letters one review reads at most, oldest first (the depth is always exact).",
)
@click.option(
    "--allowed-broker", "allowed_brokers", multiple=True, envvar="FLOWKEEPER_ALLOWED_BROKERS",
    callback=lambda _ctx, _param, value: tuple(v.strip() for item in value for v in item.split(",") if v.strip()),
    help="A broker host:port flows may name in spec.source.connection (repeatable; the variable takes a comma-separated "
    "list). Default: none (flows' dead letters are not reached).",
)
@click.option("--log-level", type=click.Choice(["info", "debug"]), default="info", show_default=True, envvar="FLOWKEEPER_LOG_LEVEL", help="debug: also Flowkeeper's routine lines (one per pass), without kopf's.")
@click.option("--verbose", is_flag=True, help="Debug logs, kopf's included.")
def run(
    namespaces: tuple[str, ...],
    selector,
    standalone: bool,
    lease_name: str,
    lease_namespace: str,
    identity: str | None,
    lease_duration: int,
    liveness_endpoint: str | None,
    log_format: str,
    metrics_port: int,
    prometheus_url: str | None,
    prometheus_bearer_token_file: str | None,
    prometheus_ca_file: str | None,
    prometheus_timeout: float,
    prometheus_pass_timeout: float | None,
    allowed_prometheus_servers: tuple[str, ...],
    allow_metrics_overrides: bool,
    rate_window: str,
    request_timeout: float,
    loop_stall_seconds: float,
    conflict_hold_off: float,
    write_concurrency: int,
    write_qps: float,
    write_burst: int,
    watch_rollouts: bool,
    dead_letter_review_interval: float,
    dead_letter_review_limit: int,
    allowed_brokers: tuple[str, ...],
    log_level: str,
    verbose: bool,
) -> None:
    """Run the operator against the current kubeconfig, or in-cluster config inside a Pod."""
    import kopf

    from flowkeeper.api.v1alpha1 import ROLLOUT
    from flowkeeper.config import LeaseConfig, OperatorConfig
    from flowkeeper.handlers import operator as handlers  # importing registers the handlers
    from flowkeeper.observability import logs

    config = OperatorConfig(
        namespaces=tuple(namespaces),
        selector=selector,
        metrics_port=metrics_port or None,
        prometheus_url=prometheus_url,
        prometheus_bearer_token_file=prometheus_bearer_token_file,
        prometheus_ca_file=prometheus_ca_file,
        prometheus_timeout=prometheus_timeout,
        prometheus_pass_timeout=prometheus_pass_timeout,
        allowed_prometheus_servers=allowed_prometheus_servers,
        allow_metrics_overrides=allow_metrics_overrides,
        rate_window=rate_window,
        request_timeout=request_timeout,
        loop_stall_seconds=loop_stall_seconds,
        conflict_hold_off=conflict_hold_off,
        write_concurrency=write_concurrency,
        write_qps=write_qps,
        write_burst=write_burst,
        watch_rollouts=watch_rollouts,
        dead_letter_review_interval=dead_letter_review_interval,
        dead_letter_review_limit=dead_letter_review_limit,
        allowed_brokers=allowed_brokers,
        lease=None if standalone else LeaseConfig(
            name=lease_name, namespace=lease_namespace, identity=identity or socket.gethostname(), duration=lease_duration
        ),
    )

    if watch_rollouts:
        handlers.watch_targets(ROLLOUT)
    logs.configure(log_format, verbose=verbose, level=log_level)
    kopf.run(
        # kopf peering freezes replicas of equal priority; the Lease (controller/leadership.py) elects.
        standalone=True,
        # kopf's own id, unused without peering; given so that kopf does not look the user up: the
        # image's user 65532 has no passwd entry, and getpass.getuser() fails for it.
        identity=config.lease.identity if config.lease else socket.gethostname(),
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness_endpoint,
        memo=kopf.Memo(config=config),
    )


@main.command()
@click.option("--kind", type=click.Choice(["IntegrationFlow", "DeadLetterRedrive"]), default="IntegrationFlow", show_default=True)
def crd(kind: str) -> None:
    """Print a CustomResourceDefinition (YAML), generated from the API models."""
    from flowkeeper.api.crd import RESOURCES, render_yaml

    click.echo(render_yaml(next(r for r in RESOURCES if r.kind == kind)), nl=False)


if __name__ == "__main__":
    main()
