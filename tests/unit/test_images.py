"""The image cache's keys (tests/support/images.py): a build context is keyed by the files buildah
would send (.dockerignore applied), and the base image's sources come from apt's own listing."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.support.images import OPERATOR_DOCKERFILE, REPO, content_key, context_digest, sources_of_suite


def _context(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "app" / "__pycache__").mkdir()
    (root / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (root / "notes.txt").write_text("not in the image\n")
    (root / "Dockerfile").write_text("FROM base\nCOPY app/ /app/\n")
    (root / ".dockerignore").write_text("*\n!app/\napp/**/__pycache__\n")
    return root


def test_the_context_key_follows_the_files_the_build_sees(tmp_path: Path) -> None:
    context = _context(tmp_path)
    before = context_digest(context, context / "Dockerfile")
    assert [path for path, _, _ in before] == [".dockerignore", "Dockerfile", "app/main.py"]

    # files .dockerignore leaves out change nothing
    (context / "notes.txt").write_text("changed\n")
    (context / "app" / "__pycache__" / "other.pyc").write_bytes(b"\1")
    assert context_digest(context, context / "Dockerfile") == before

    # a sent file's content, or its executable bit, changes the key
    (context / "app" / "main.py").write_text("print('bye')\n")
    changed = context_digest(context, context / "Dockerfile")
    assert changed != before
    (context / "app" / "main.py").chmod(0o755)
    assert context_digest(context, context / "Dockerfile") != changed


def test_the_operator_context_is_only_the_project() -> None:
    sent = {path for path, _, _ in context_digest(REPO, OPERATOR_DOCKERFILE)}
    assert {"pyproject.toml", "README.md", "operator/flowkeeper/cli.py", "operator/Dockerfile"} <= sent
    assert not [p for p in sent if p.startswith(("tests/", "charts/", ".git/", ".venv/")) or "__pycache__" in p or ".egg-info" in p]


@given(st.lists(st.one_of(st.text(), st.integers(), st.none()), max_size=5))
def test_content_keys_are_stable_and_tell_inputs_apart(parts: list) -> None:
    assert content_key(*parts) == content_key(*parts)
    assert content_key(*parts) != content_key(*parts, "more")
    assert len(content_key(*parts)) == 20


INDEXTARGETS = """\
deb http://mirror.example/debian/ bookworm main
deb http://mirror.example/debian/ bookworm contrib
deb http://mirror.example/debian/ bookworm main
deb http://mirror.example/debian/ bookworm-updates main
deb http://mirror.example/debian-security/ bookworm-security main
deb https://vendor.example/apt/ cloud-sdk-bookworm main
deb-src http://mirror.example/debian/ bookworm main
deb http://mirror.example/debian/ trixie main
"""


def test_the_sources_of_a_suite_are_the_machines_own_for_it() -> None:
    assert sources_of_suite(INDEXTARGETS, "bookworm") == [
        "deb http://mirror.example/debian-security/ bookworm-security main",
        "deb http://mirror.example/debian/ bookworm contrib main",
        "deb http://mirror.example/debian/ bookworm-updates main",
    ]
    assert sources_of_suite(INDEXTARGETS, "trixie") == ["deb http://mirror.example/debian/ trixie main"]
    # without the suite itself, -updates or -security alone are no source
    assert sources_of_suite("deb http://m/debian/ sid-updates main\n", "sid") == []
