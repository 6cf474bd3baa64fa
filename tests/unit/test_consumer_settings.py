"""The real consumer's settings (examples/consumer/settings.py): from the environment or mounted
files, every mistake a ConfigurationError that names the variable to fix; and its backoff."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.consumer.errors import ConfigurationError
from examples.consumer.handling import burn_cpu
from examples.consumer.loop import Backoff
from examples.consumer.settings import ConsumerSettings, ReportingSettings, load_check

REQUIRED = {"CONSUMER_BROKER_HOST": "rabbitmq.shop", "CONSUMER_BROKER_USERNAME": "orders",
            "CONSUMER_BROKER_PASSWORD": "s3cret", "CONSUMER_QUEUE": "orders"}

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(lambda s: s.strip() == s)
ports = st.integers(min_value=1, max_value=65535)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_the_defaults() -> None:
    parsed = ConsumerSettings.from_environment(REQUIRED)
    assert parsed == ConsumerSettings(host="rabbitmq.shop", queue="orders", username="orders", password="s3cret")
    assert (parsed.port, parsed.vhost, parsed.prefetch, parsed.dead_letter_queue, parsed.check) == (5672, "/", 10, None, None)
    assert "s3cret" not in repr(parsed), "the password stays out of logs"
    reporting = ReportingSettings.from_environment({"CONSUMER_INTEGRATION": "order-to-warehouse"})
    assert reporting == ReportingSettings("order-to-warehouse", None, "0.0.0.0", 8000, 1.0, 15.0)


@given(host=names, port=ports, vhost=names, username=names, password=names, queue=names, dlq=st.none() | names,
       prefetch=st.integers(min_value=1, max_value=65535), wait=seconds, cpu=seconds)
def test_what_is_set_is_what_is_read(host, port, vhost, username, password, queue, dlq, prefetch, wait, cpu) -> None:
    environ = {"CONSUMER_BROKER_HOST": host, "CONSUMER_BROKER_PORT": str(port), "CONSUMER_BROKER_VHOST": vhost,
               "CONSUMER_BROKER_USERNAME": username, "CONSUMER_BROKER_PASSWORD": password, "CONSUMER_QUEUE": queue,
               "CONSUMER_PREFETCH": f" {prefetch} ", "CONSUMER_SECONDS_PER_MESSAGE": repr(wait),
               "CONSUMER_CPU_SECONDS_PER_MESSAGE": repr(cpu)}
    if dlq is not None:
        environ["CONSUMER_DEAD_LETTER_QUEUE"] = dlq
    assert ConsumerSettings.from_environment(environ) == ConsumerSettings(
        host=host, port=port, vhost=vhost, username=username, password=password, queue=queue, dead_letter_queue=dlq,
        prefetch=prefetch, seconds_per_message=wait, cpu_seconds_per_message=cpu,
    )


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(lambda s: s.rstrip("\r\n") == s),
       newline=st.sampled_from(["", "\n", "\r\n"]))
def test_a_mounted_file_reads_as_the_variable(tmp_path: Path, value: str, newline: str) -> None:
    mounted = tmp_path / "password"
    mounted.write_bytes((value + newline).encode())
    from_file = ConsumerSettings.from_environment({**REQUIRED, "CONSUMER_BROKER_PASSWORD": "", "CONSUMER_BROKER_PASSWORD_FILE": str(mounted)})
    assert from_file.password == value


def test_a_setting_given_twice_or_unreadable_is_a_configuration_error(tmp_path: Path) -> None:
    mounted = tmp_path / "password"
    mounted.write_text("s3cret")
    with pytest.raises(ConfigurationError, match="CONSUMER_BROKER_PASSWORD and CONSUMER_BROKER_PASSWORD_FILE are both set"):
        ConsumerSettings.from_environment({**REQUIRED, "CONSUMER_BROKER_PASSWORD_FILE": str(mounted)})
    environ = {key: value for key, value in REQUIRED.items() if key != "CONSUMER_BROKER_PASSWORD"}
    with pytest.raises(ConfigurationError, match="CONSUMER_BROKER_PASSWORD_FILE: cannot read"):
        ConsumerSettings.from_environment({**environ, "CONSUMER_BROKER_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_required_setting_that_is_missing_or_empty_is_named(missing: str) -> None:
    for environ in ({k: v for k, v in REQUIRED.items() if k != missing}, {**REQUIRED, missing: ""}):
        with pytest.raises(ConfigurationError, match=f"{missing} \\(or {missing}_FILE\\) is not set"):
            ConsumerSettings.from_environment(environ)


@given(st.sampled_from(["CONSUMER_BROKER_PORT", "CONSUMER_PREFETCH"]), st.one_of(
    st.integers(max_value=0).map(str), st.integers(min_value=65536).map(str),
    st.text(max_size=10).filter(lambda s: s.strip() and not s.strip().lstrip("+-").isdigit()),
))
def test_a_number_out_of_range_or_not_a_number_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        ConsumerSettings.from_environment({**REQUIRED, variable: value})


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon", "1e400"])
def test_seconds_are_finite_and_not_negative(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSUMER_CPU_SECONDS_PER_MESSAGE"):
        ConsumerSettings.from_environment({**REQUIRED, "CONSUMER_CPU_SECONDS_PER_MESSAGE": value})


@given(st.dictionaries(st.sampled_from([*REQUIRED, "CONSUMER_BROKER_PORT", "CONSUMER_PREFETCH", "CONSUMER_SECONDS_PER_MESSAGE",
                                        "CONSUMER_INTEGRATION", "CONSUMER_METRICS_PORT", "CONSUMER_BACKOFF_MAX_SECONDS"]),
                       st.text(max_size=12)))
def test_any_environment_either_parses_or_is_a_configuration_error(environ: dict[str, str]) -> None:
    for parse in (ConsumerSettings.from_environment, ReportingSettings.from_environment):
        try:
            parse(environ)
        except ConfigurationError:
            pass


def test_the_backoff_maximum_is_not_below_its_start() -> None:
    with pytest.raises(ConfigurationError, match="CONSUMER_BACKOFF_MAX_SECONDS"):
        ReportingSettings.from_environment({"CONSUMER_INTEGRATION": "x", "CONSUMER_BACKOFF_INITIAL_SECONDS": "20",
                                            "CONSUMER_BACKOFF_MAX_SECONDS": "10"})


def test_a_check_is_loaded_by_its_name() -> None:
    from examples.demo import orders

    assert load_check("examples.demo.orders:release_1_1") is orders.release_1_1
    for wrong in ("examples.demo.orders", "no.such.module:check", "examples.demo.orders:no_such_check",
                  "examples.demo.orders:INVALID_DATE"):
        with pytest.raises(ConfigurationError, match="CONSUMER_CHECK"):
            load_check(wrong)


@given(initial=st.floats(min_value=0, max_value=10), extra=st.floats(min_value=0, max_value=100),
       failures=st.integers(min_value=1, max_value=30))
def test_the_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success(initial: float, extra: float, failures: int) -> None:
    backoff = Backoff(initial, initial + extra)
    delays = [backoff.next() for _ in range(failures)]
    assert delays[0] == initial
    assert all(initial <= delay <= initial + extra for delay in delays)
    assert all(later == min(initial + extra, earlier * 2) for earlier, later in zip(delays, delays[1:]))
    backoff.reset()
    assert backoff.next() == initial


def test_burning_cpu_uses_cpu_time() -> None:
    started_cpu, started = time.thread_time(), time.monotonic()
    burn_cpu(0.05)
    assert time.thread_time() - started_cpu >= 0.05
    assert time.monotonic() - started >= 0.05
