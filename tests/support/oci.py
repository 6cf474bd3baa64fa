"""Running a command of an image under runc, confined the way the chart confines the operator's pod:
a read-only root filesystem, a tmpfs at /tmp, an unprivileged user, no capabilities, no new
privileges, and its own namespaces (no network but loopback).

    with image_rootfs(image) as rootfs:
        result = run_in_rootfs(rootfs, image_config(image), ["--help"], user=(65532, 65532))

The root filesystem is a buildah working container of the image (held under the storage lock while
in use, so a killed run's container is removed by the next one). Containers are named after the
process that started them, in a runc state folder of their own; one whose starter is gone is a killed
run's and is deleted (with its cgroups) before the next run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.images import Image, buildah, load, storage_lock

RUNC_ROOT = Path("/run/flowkeeper-runc")
CONTAINER_PREFIX = "flowkeeper-"
_counter = itertools.count()


def image_config(image: Image) -> dict:
    """The image's OCI configuration (Entrypoint, Cmd, Env, User, WorkingDir, Labels)."""
    load(image)
    return json.loads(buildah("inspect", "--type", "image", image.name))["OCIv1"]["config"]


@contextlib.contextmanager
def image_rootfs(image: Image) -> Iterator[Path]:
    """The image's root filesystem, in a working container removed afterwards."""
    with storage_lock.held():
        load(image)
        container = buildah("from", "--quiet", "--pull-never", image.name).strip()
        try:
            yield Path(buildah("mount", container).strip())
        finally:
            buildah("umount", container)
            buildah("rm", container)


def _runc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runc", "--root", str(RUNC_ROOT), *args], capture_output=True, text=True, timeout=timeout)


def remove_leftover_containers() -> None:
    """Deletes containers of this support whose starting process is gone (a killed run)."""
    listed = _runc("list", "--format", "json")
    for container in json.loads(listed.stdout or "null") or []:
        name = container["id"]
        if not name.startswith(CONTAINER_PREFIX):
            continue
        starter = int(name.removeprefix(CONTAINER_PREFIX).split("-")[0])
        if not Path(f"/proc/{starter}").exists():
            _runc("delete", "--force", name)


def _spec(rootfs: Path, argv: Sequence[str], env: Sequence[str], cwd: str, user: tuple[int, int], readonly: bool) -> dict:
    uid, gid = user
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(argv),
            "env": list(env),
            "cwd": cwd,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
            "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "hostname": "flowkeeper",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            # the chart's only writable path (an emptyDir of 64Mi)
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=64m"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def run_in_rootfs(
    rootfs: Path, config: dict, args: Sequence[str] | None = None, *, entrypoint: Sequence[str] | None = None,
    user: tuple[int, int] = (65532, 65532), readonly: bool = True, timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Runs the image's entrypoint (or `entrypoint`) with `args` (default: the image's Cmd) in
    `rootfs`, with the image's environment and working folder; returns its exit code and output."""
    argv = [*(entrypoint if entrypoint is not None else config.get("Entrypoint") or []),
            *(args if args is not None else config.get("Cmd") or [])]
    RUNC_ROOT.mkdir(parents=True, exist_ok=True)
    remove_leftover_containers()
    name = f"{CONTAINER_PREFIX}{os.getpid()}-{next(_counter)}"
    with tempfile.TemporaryDirectory(prefix="bundle-") as bundle:
        spec = _spec(rootfs, argv, config.get("Env") or [], config.get("WorkingDir") or "/", user, readonly)
        (Path(bundle) / "config.json").write_text(json.dumps(spec))
        try:
            return _runc("run", "--bundle", bundle, name, timeout=timeout)
        finally:
            _runc("delete", "--force", name)
