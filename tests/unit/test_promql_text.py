"""PromQL text the adapter writes around user input: label values escaped, a flow's own query made
safe to embed, server URLs compared and credentials kept out of messages. Pure; that Prometheus reads
the results as meant is checked in tests/integration/test_prometheus_signals.py."""

from __future__ import annotations

import re

import ast

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flowkeeper.adapters.prometheus.client import server_timeout
from flowkeeper.adapters.prometheus.promql import matchers, string_literal, strip_comments
from flowkeeper.adapters.prometheus.servers import AllowedServers, base_url, redact, settings_for

# Label values come from YAML through the API server: any valid Unicode text.
label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=50)


@given(label_values)
@example('a"b\\c\nd\te\x00\x7f')
@example("")
def test_a_label_value_is_one_string_literal_meaning_exactly_itself(value: str) -> None:
    literal = string_literal(value)
    # Go's escapes (PromQL's) and Python's agree on \\, \" and \xNN; nothing else is escaped.
    assert ast.literal_eval(literal) == value
    inner = literal[1:-1]
    assert "\n" not in inner and '"' not in inner.replace('\\"', "")


def test_label_names_are_checked() -> None:
    assert matchers((("instance", "rabbitmq-prod:15692"), ("_x1", 'a"b'))) == 'instance="rabbitmq-prod:15692", _x1="a\\"b"'
    with pytest.raises(ValueError, match="spec.source.metricLabels"):
        matchers((("rabbit-cluster", "prod"),))


@pytest.mark.parametrize(
    ("promql", "stripped"),
    [
        ("sum(x) # the total", "sum(x) "),
        ('sum(x{path="/a#b"}) # c', 'sum(x{path="/a#b"}) '),
        ("sum(x{path='#'})#c\n+ 1 # d", "sum(x{path='#'})\n+ 1 "),
        ('x{a="say \\"#\\" here"}', 'x{a="say \\"#\\" here"}'),
        ("x{a=`raw \\` # not closed", "x{a=`raw \\` "),
        ("# only a comment", ""),
        ('x{a="unclosed # string', 'x{a="unclosed # string'),
    ],
)
def test_comments_are_stripped_but_never_inside_strings(promql: str, stripped: str) -> None:
    assert strip_comments(promql) == stripped


@given(st.text(st.characters(blacklist_characters="#"), max_size=80))
def test_text_without_a_hash_is_left_as_it_is(promql: str) -> None:
    assert strip_comments(promql) == promql


@given(st.text(st.characters(blacklist_characters="\"'`#\n"), max_size=40), st.text(st.characters(blacklist_characters="\n"), max_size=40))
def test_a_comment_ends_at_the_line_end(code: str, comment: str) -> None:
    assert strip_comments(f"{code}#{comment}\n1") == f"{code}\n1"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://Prometheus.Monitoring:443/", "https://prometheus.monitoring"),
        ("http://p:80/prom/", "http://p/prom"),
        ("https://user:secret@p:9090", "https://p:9090"),
    ],
)
def test_equal_base_urls(a: str, b: str) -> None:
    assert base_url(a) == base_url(b) is not None


@pytest.mark.parametrize("other", ["https://p:9091", "http://p:9090", "https://p:9090/other", "https://q:9090", "https://p.evil:9090"])
def test_only_exactly_the_allowed_servers_are_allowed(other: str) -> None:
    allowed = AllowedServers("http://default:9090", ["https://p:9090"])
    assert allowed.allows("https://p:9090/") and allowed.allows("http://default:9090")
    assert not allowed.allows(other)


@pytest.mark.parametrize("bad", ["ftp://p", "https://", "https://p:9090?x=1", "https://p:99999", "p:9090"])
def test_what_is_not_a_base_url_is_never_allowed(bad: str) -> None:
    assert base_url(bad) is None
    assert not AllowedServers("http://default:9090").allows(bad)


def test_userinfo_becomes_basic_auth_and_leaves_the_url() -> None:
    settings = settings_for("https://alice:s3cret@p:9090/")
    assert (settings.url, settings.auth) == ("https://p:9090", ("alice", "s3cret"))
    assert "s3cret" not in repr(settings)


@given(st.text(max_size=30), st.text(min_size=4, max_size=20), st.text(max_size=30))
def test_a_secret_never_survives_redaction(before: str, secret: str, after: str) -> None:
    assert secret not in redact(before + secret + after, [secret])


# Userinfo never holds whitespace (none that \s matches, Unicode spaces too) nor URL delimiters.
@given(st.text(st.characters(blacklist_characters="/?#@"), min_size=1, max_size=20).filter(lambda t: not re.search(r"\s", t)))
def test_userinfo_never_survives_redaction(userinfo: str) -> None:
    text = f"connect to https://{userinfo}@prometheus:9090/api failed"
    assert redact(text) == "connect to https://***@prometheus:9090/api failed"


@given(st.floats(min_value=0.001, max_value=3600))
def test_prometheus_gives_up_before_the_client(budget: float) -> None:
    assert 0 < server_timeout(budget) < budget
    assert budget - server_timeout(budget) <= 1.0
