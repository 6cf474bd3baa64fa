"""operator/Dockerfile, without a Docker engine: its stages are parsed and checked (a non-root,
shell-free runtime with an exec-form entrypoint), and the builder stage's build context is laid out
in a folder (its COPY instructions over the files .dockerignore lets through) from which the same wheel
is built, so the image's install step is known to work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.support.cluster import REPO

DOCKERFILE = REPO / "operator" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# Runtime bases whose Python is 3.11, the version the builder's wheels (compiled ones included) are for.
PYTHON_311_RUNTIMES = ("python:3.11-slim",)


@dataclass
class Instruction:
    keyword: str  # upper case
    arguments: str

    @property
    def words(self) -> list[str]:
        return self.arguments.split()


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions: comment lines dropped (also inside a continued instruction, as
    Docker does), lines ending in a backslash joined."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        if logical.strip():
            keyword, _, arguments = logical.strip().partition(" ")
            result.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continued line"
    return result


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        else:
            assert result, f"{instruction.keyword} before the first FROM"
            result[-1].instructions.append(instruction)
    return result


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD (a shell-form one is not JSON and fails here)."""
    value = json.loads(instruction.arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def builder(dockerfile: list[Stage]) -> Stage:
    return dockerfile[0]


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Stage]) -> Stage:
    return dockerfile[-1]


def test_the_parser_reads_continuations_and_exec_forms() -> None:
    parsed = stages('# c\nFROM a:1 AS b\nRUN x \\\n  # inside\n  && y\nFROM c\nENTRYPOINT ["p", "q"]\n')
    assert [(s.base, s.name) for s in parsed] == [("a:1", "b"), ("c", None)]
    assert parsed[0].instructions == [Instruction("RUN", "x    && y")]
    assert exec_form(parsed[1].last("ENTRYPOINT")) == ["p", "q"]
    with pytest.raises(json.JSONDecodeError):
        exec_form(Instruction("ENTRYPOINT", "flowkeeper run"))


# --------------------------------------------------------------------------------------- the stages


def test_two_stages_the_builder_on_python_311(dockerfile: list[Stage], builder: Stage) -> None:
    assert len(dockerfile) == 2
    assert builder.base == "python:3.11-slim" and builder.name
    runs = " ".join(i.arguments for i in builder.all("RUN"))
    assert "pip wheel" in runs and "venv" in runs and "install" in runs


def test_builder_copies_the_project_from_the_repo(builder: Stage) -> None:
    sources = {source for copy in builder.all("COPY") for source in copy_sources(copy)}
    assert "pyproject.toml" in sources
    assert "operator/" in sources or "operator" in sources
    assert not [c for c in builder.all("COPY") if "--from" in c.arguments]


def test_runtime_has_no_shell_steps_and_runs_as_non_root(runtime: Stage, builder: Stage) -> None:
    assert runtime.base.startswith(PYTHON_311_RUNTIMES), f"{runtime.base}: the runtime's Python must be 3.11"
    assert not runtime.all("RUN"), "the final stage must not need a shell"
    assert [c.arguments for c in runtime.all("COPY")] == [f"--from={builder.name} /opt/venv /opt/venv"]

    user, _, group = runtime.last("USER").arguments.partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER, so runAsNonRoot can check it"
    assert not group or (group.isdigit() and int(group) != 0)
    # the chart runs the Pods as the same user
    values = yaml.safe_load((REPO / "charts" / "flowkeeper" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(user)


def test_entrypoint_is_the_flowkeeper_command_in_exec_form(runtime: Stage) -> None:
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    assert PurePosixPath(entrypoint[0]).name == "flowkeeper" or entrypoint[-2:] == ["-m", "flowkeeper.cli"]
    assert exec_form(runtime.last("CMD")) == ["run"]
    assert "8080" in {port.split("/")[0] for expose in runtime.all("EXPOSE") for port in expose.words}


# ------------------------------------------------------------------------------- the build context


def ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last pattern that matches it or
    one of its parent folders decides; "!" lets it back in."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _pattern(raw.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negated
    return result


def test_the_ignore_matcher() -> None:
    patterns = ["*", "!operator/", "operator/**/__pycache__", "operator/*.egg-info"]
    assert ignored(".venv/bin/python", patterns) and ignored("tests/unit/x.py", patterns)
    assert not ignored("operator/flowkeeper/cli.py", patterns)
    assert ignored("operator/flowkeeper/__pycache__/cli.cpython-311.pyc", patterns)
    assert ignored("operator/flowkeeper.egg-info/PKG-INFO", patterns)


def copy_sources(copy: Instruction) -> list[str]:
    words = [w for w in copy.words if not w.startswith("--")]
    return words[:-1]


def context_files(patterns: list[str]) -> list[str]:
    """The files of the repository that the build context holds (.dockerignore applied), limited to
    the top-level names the Dockerfile copies."""
    files: list[str] = []
    for top in ("pyproject.toml", "README.md", "operator"):
        root = REPO / top
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(REPO).as_posix()
            if not ignored(relative, patterns):
                files.append(relative)
    return files


def lay_out_builder(builder: Stage, into: Path) -> Path:
    """The builder's WORKDIR as its COPY instructions fill it from the build context; returns it."""
    workdir = PurePosixPath(builder.last("WORKDIR").arguments)
    available = context_files(ignore_patterns())
    for copy in builder.all("COPY"):
        *sources, destination = [w for w in copy.words if not w.startswith("--")]
        target = workdir / destination
        for source in sources:
            source = source.rstrip("/")
            chosen = [f for f in available if f == source or f.startswith(source + "/")]
            assert chosen, f"COPY {source}: nothing of it is in the build context (.dockerignore?)"
            for file in chosen:
                relative = PurePosixPath(file).name if file == source else PurePosixPath(file).relative_to(source)
                landed = into / (target / relative).relative_to("/")
                landed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(REPO / file, landed)
    return into / workdir.relative_to("/")


def test_build_context_is_only_the_project(builder: Stage) -> None:
    patterns = ignore_patterns()
    for kept in ("pyproject.toml", "README.md", "operator/flowkeeper/cli.py", "operator/flowkeeper/__init__.py"):
        assert not ignored(kept, patterns), kept
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/unit/test_chart.py", "charts/flowkeeper/values.yaml",
                     "operator/flowkeeper/__pycache__/cli.cpython-311.pyc", "operator/flowkeeper.egg-info/PKG-INFO"):
        assert ignored(left_out, patterns), left_out


def test_the_image_install_step_builds_the_operator_wheel(builder: Stage, tmp_path: Path) -> None:
    source = lay_out_builder(builder, tmp_path / "image")
    assert (source / "pyproject.toml").is_file() and (source / "operator" / "flowkeeper" / "cli.py").is_file()
    assert not list(source.rglob("__pycache__"))

    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("flowkeeper-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "flowkeeper/cli.py" in names and "flowkeeper/api/crd.py" in names
        assert not [n for n in names if n.startswith(("tests/", "operator/")) or "__pycache__" in n]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert re.search(r"^\[console_scripts\]\s*\nflowkeeper = flowkeeper\.cli:main$", archive.read(entry_points).decode(), re.M)
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        provided = re.findall(r"^Provides-Extra: (\S+)$", archive.read(metadata).decode(), re.M)

    # the extras the Dockerfile installs by default exist
    (extras,) = [i.arguments for i in builder.all("ARG") if i.arguments.startswith("EXTRAS")]
    for extra in filter(None, extras.partition("=")[2].split(",")):
        assert extra in provided
