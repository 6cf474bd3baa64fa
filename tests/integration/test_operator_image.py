"""operator/Dockerfile built for real (buildah, FROM the Debian base built here, every RUN step
executed) and the image run under runc as the chart runs the operator's pod: user 65532, a read-only
root filesystem, a tmpfs at /tmp, no capabilities."""

from __future__ import annotations

import errno
import json
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import images, oci
from tests.support.images import REPO, REVISION_LABEL, Image
from tests.support.oci import image_config, image_rootfs, run_in_rootfs

# A cold build (Debian base, then the operator's dependencies from PyPI) takes a few minutes.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

CHART_USER = yaml.safe_load((REPO / "charts" / "flowkeeper" / "values.yaml").read_text())["podSecurityContext"]
USER = (CHART_USER["runAsUser"], CHART_USER["runAsGroup"])

# Prints, for each path, whether a file could be written there (or the errno name why not).
WRITE_PROBE = """
import errno, os, sys
print(os.getuid(), os.getgid())
for path in sys.argv[1:]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print(path, "written")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"""


@pytest.fixture(scope="module")
def operator() -> Image:
    return images.operator_image()


@pytest.fixture(scope="module")
def config(operator: Image) -> dict:
    return image_config(operator)


@pytest.fixture(scope="module")
def rootfs(operator: Image) -> Iterator[Path]:
    with image_rootfs(operator) as path:
        yield path


def test_the_image_runs_as_the_charts_user_with_the_flowkeeper_entrypoint(config: dict) -> None:
    assert config["User"] == f"{USER[0]}:{USER[1]}"
    assert config["Entrypoint"] == ["/opt/venv/bin/flowkeeper"] and config["Cmd"] == ["run"]
    assert {"8080/tcp", "8081/tcp"} <= set(config["ExposedPorts"])


def test_flowkeeper_help_runs_unprivileged_on_a_read_only_root(rootfs: Path, config: dict) -> None:
    result = run_in_rootfs(rootfs, config, ["--help"], user=USER, readonly=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: flowkeeper [OPTIONS] COMMAND")
    commands = result.stdout.partition("Commands:")[2].split()
    assert {"run", "crd"} <= set(commands)


def test_the_root_filesystem_is_read_only_and_only_tmp_is_writable(rootfs: Path, config: dict) -> None:
    # /var/tmp is writable by everyone in the image: only the read-only root refuses the write.
    probe = ["-c", WRITE_PROBE, "/var/tmp/probe", "/opt/venv/probe", "/tmp/probe"]
    result = run_in_rootfs(rootfs, config, probe, entrypoint=["/opt/venv/bin/python"], user=USER, readonly=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{USER[0]} {USER[1]}"
    assert lines[1:] == [f"/var/tmp/probe {errno.errorcode[errno.EROFS]}", f"/opt/venv/probe {errno.errorcode[errno.EROFS]}",
                         "/tmp/probe written"]

    # the same probe on a writable root: /var/tmp is written, so the refusal above was the read-only root
    writable = run_in_rootfs(rootfs, config, probe[:3], entrypoint=["/opt/venv/bin/python"], user=USER, readonly=False)
    assert writable.stdout.splitlines()[1:] == ["/var/tmp/probe written"], writable.stderr


def test_flowkeeper_crd_prints_the_repositorys_crds(rootfs: Path, config: dict) -> None:
    for kind, committed in (("IntegrationFlow", "flowkeeper.io_integrationflows.yaml"),
                            ("DeadLetterRedrive", "flowkeeper.io_deadletterredrives.yaml")):
        result = run_in_rootfs(rootfs, config, ["crd", "--kind", kind], user=USER)
        assert result.returncode == 0, result.stderr
        printed = yaml.safe_load(result.stdout)
        assert printed["kind"] == "CustomResourceDefinition" and printed["spec"]["names"]["kind"] == kind
        assert printed == yaml.safe_load((REPO / "crds" / committed).read_text())


def test_the_default_extras_are_installed(rootfs: Path, config: dict) -> None:
    # EXTRAS defaults to "otel": tracing works in the image when OTEL_EXPORTER_OTLP_ENDPOINT is set
    probe = ["-c", "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http; print('ok')"]
    result = run_in_rootfs(rootfs, config, probe, entrypoint=["/opt/venv/bin/python"], user=USER)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def _layers(archive: Path) -> list[list[str]]:
    """The member names of each layer of a docker-archive, base layer first."""
    with tarfile.open(archive) as outer:
        (manifest,) = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = []
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(outer.getmember(layer))) as inner:
                layers.append(inner.getnames())
        return layers


def test_the_image_is_the_base_plus_the_operators_venv_only(operator: Image) -> None:
    base_layers, operator_layers = _layers(images.base_image().archive), _layers(operator.archive)
    assert operator_layers[: len(base_layers)] == base_layers
    (added,) = operator_layers[len(base_layers):]
    # no build venv, wheels, pip, the host's CA bundle or sources: only the operator's venv
    assert added and all(name.rstrip("/") in ("opt", "opt/venv") or name.startswith("opt/venv/") for name in added), \
        sorted({n.split("/")[0] + "/" + (n.split("/") + [""])[1] for n in added})
    site = "opt/venv/lib/python3.11/site-packages/"
    assert f"{site}flowkeeper/cli.py" in added and f"{site}flowkeeper/api/crd.py" in added
    assert not [n for n in added if n.startswith((f"{site}tests/", f"{site}pip/", "opt/venv/bin/pip"))]


def test_a_second_build_costs_nothing(operator: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_buildah(*args: str, **kwargs: object) -> str:
        raise AssertionError(f"buildah {' '.join(args)} ran for a cached image")

    monkeypatch.setattr(images, "buildah", no_buildah)
    started = time.monotonic()
    assert images.operator_image() == operator
    assert time.monotonic() - started < 10


def test_a_revision_is_a_changed_image_of_the_same_program(operator: Image) -> None:
    changed = images.operator_image(revision="upgrade-1")
    assert changed.repository == operator.repository
    assert changed.tag != operator.tag and changed.id != operator.id
    assert image_config(changed)["Labels"][REVISION_LABEL] == "upgrade-1"
    assert REVISION_LABEL not in image_config(operator)["Labels"]
    # the operator's layers, and at most an empty one of the new configuration
    changed_layers, operator_layers = _layers(changed.archive), _layers(operator.archive)
    assert changed_layers[: len(operator_layers)] == operator_layers
    assert not [names for names in changed_layers[len(operator_layers):] if names]
    assert images.operator_image(revision="upgrade-1") == changed


def test_a_killed_runs_container_is_deleted_by_the_next_run(rootfs: Path, config: dict) -> None:
    dead = subprocess.Popen(["true"])  # its pid names the container: a starter that is gone
    dead.wait()
    leftover = f"{oci.CONTAINER_PREFIX}{dead.pid}-0"
    with tempfile.TemporaryDirectory() as bundle:
        spec = oci._spec(rootfs, ["/opt/venv/bin/python", "-c", "import time; time.sleep(600)"], config["Env"], "/", USER, True)
        (Path(bundle) / "config.json").write_text(json.dumps(spec))
        try:
            # the container's process keeps runc's stdio: a file, not a pipe that would never close
            with tempfile.TemporaryFile() as errors:
                created = subprocess.run(["runc", "--root", str(oci.RUNC_ROOT), "create", "--bundle", bundle, leftover],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, timeout=60)
                errors.seek(0)
                assert created.returncode == 0, errors.read().decode()
            assert leftover in _runc_ids()
            result = run_in_rootfs(rootfs, config, ["--help"], user=USER)
            assert result.returncode == 0 and leftover not in _runc_ids()
        finally:
            subprocess.run(["runc", "--root", str(oci.RUNC_ROOT), "delete", "--force", leftover], capture_output=True)


def _runc_ids() -> set[str]:
    listed = subprocess.run(["runc", "--root", str(oci.RUNC_ROOT), "list", "--quiet"], capture_output=True, text=True, check=True)
    return set(listed.stdout.split())
