"""The test broker's cluster id (tests/support/kafka.py) is one the storage tool accepts."""

import base64

from hypothesis import given, strategies as st

from tests.support.kafka import _cluster_id


def test_an_id_that_would_start_with_a_dash_is_drawn_again():
    dash_first = b"\xf8" + bytes(15)  # 0b111110.. encodes to "-" in URL-safe base64
    plain = bytes(range(16))
    draws = iter([dash_first, dash_first, plain])

    cluster_id = _cluster_id(lambda: next(draws))

    assert base64.urlsafe_b64encode(dash_first).decode().startswith("-")
    assert cluster_id == base64.urlsafe_b64encode(plain).rstrip(b"=").decode()


@given(st.binary(min_size=16, max_size=16))
def test_every_id_is_22_url_safe_characters_and_never_an_option(random_bytes):
    fallback = bytes(16)
    draws = iter([random_bytes, fallback])

    cluster_id = _cluster_id(lambda: next(draws))

    drawn = base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode()
    assert cluster_id == (drawn if not drawn.startswith("-") else "A" * 22)
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert set(cluster_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
