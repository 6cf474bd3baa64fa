"""What the image build (tests/integration/test_consumer_image.py) cannot check, since it builds
FROM a local Debian base: a plain `docker build` of examples/consumer/Dockerfile uses the base users
expect, and its build context (.dockerignore) holds what the Dockerfile copies."""

from __future__ import annotations

import re

from tests.support.consumer_image import CONSUMER_DOCKERFILE
from tests.support.images import REPO, context_digest


def test_the_default_base_is_python_311_slim() -> None:
    text = CONSUMER_DOCKERFILE.read_text()
    assert re.findall(r"^ARG BASE=(\S+)$", text, re.M) == ["python:3.11-slim"]
    # both stages are FROM it: the venv's interpreter path and compiled wheels must match
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]


def test_the_build_context_holds_the_consumer_and_nothing_of_the_tests() -> None:
    context = {path for path, _, _ in context_digest(REPO, CONSUMER_DOCKERFILE)}
    assert {"examples/__init__.py", "examples/consumer/main.py", "examples/demo/orders.py", "pyproject.toml",
            "operator/flowkeeper/adapters/prometheus/convention.py"} <= context
    assert not {path for path in context if path.startswith(("tests/", "examples/demo/run.py", "charts/"))}
    assert not {path for path in context if "__pycache__" in path or path.endswith(".md") and path.startswith("examples/")}
