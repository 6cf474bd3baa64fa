"""What the image build (tests/integration/test_operator_image.py) cannot check, since it builds
FROM a local Debian base: a plain `docker build` of operator/Dockerfile uses the base users expect."""

from __future__ import annotations

import re

from tests.support.images import OPERATOR_DOCKERFILE


def test_the_default_base_is_python_311_slim() -> None:
    text = OPERATOR_DOCKERFILE.read_text()
    assert re.findall(r"^ARG BASE=(\S+)$", text, re.M) == ["python:3.11-slim"]
    # both stages are FROM it: the venv's interpreter path and compiled wheels must match
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]


def test_the_bench_runs_the_operator_with_the_environment_the_image_sets() -> None:
    from bench.run import IMAGE_ENV

    text = OPERATOR_DOCKERFILE.read_text()
    for name, value in IMAGE_ENV.items():
        assert re.search(rf"^\s+{name}={value}\b", text, re.M), f"operator/Dockerfile does not set {name}={value}"
    assert "MALLOC_ARENA_MAX" in IMAGE_ENV
