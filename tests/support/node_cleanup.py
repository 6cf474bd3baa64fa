"""Removing what a real node leaves on the machine: the same steps at its stop and, for a run that was
killed (its pid gone), at the next start.

A run is recorded (a small JSON file in a machine-wide folder, keyed by the starting process's pid)
before it makes anything, so a later run finds what a killed one made: its processes (everything in
its network namespace: containerd, its shims, kubelet, kube-proxy; everything in its cgroups: the
containers), mounts under its folder (container root filesystems, pod network namespaces, volumes),
its cgroups, the CNI result cache entries of its network, the kubelet's log links, the network
namespace with its bridge, iptables chains and veth pair, and its folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support import netns
from tests.support.node_config import cri_sandboxes

CGROUP_FS = Path("/sys/fs/cgroup")
CNI_RESULTS = Path("/var/lib/cni/results")  # libcni's cache: containerd 1.6 does not move it
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's links to pod logs (not configurable)
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 runtime v2 shims listen here, whatever its state dir
_MNT_DETACH = 2


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flowkeeper-real-nodes"


@dataclass(frozen=True)
class NodeRun:
    """What one run's leftovers are called; everything is derived from the pid and the folder."""

    pid: int
    root: str  # the node's folder
    socket_dir: str  # containerd's sockets
    netns_prefix: str
    cgroup: str  # the cgroup's name under each hierarchy
    cni_network: str
    containerd_socket: str
    pod_logs: str

    @property
    def record(self) -> Path:
        return records_dir() / f"{self.pid}.json"

    @property
    def netns(self) -> str:
        return netns.names(self.netns_prefix, self.pid)[0]

    def save(self) -> None:
        records_dir().mkdir(parents=True, exist_ok=True)
        partial = self.record.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self)))
        partial.rename(self.record)


def stale_runs() -> list[NodeRun]:
    """Recorded runs whose process is gone."""
    runs = []
    for path in sorted(records_dir().glob("*.json")) if records_dir().exists() else []:
        try:
            run = NodeRun(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not netns.pid_alive(run.pid):
            runs.append(run)
    return runs


# ------------------------------------------------------------------------------------------ pure


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def mounts_under(mountinfo: str, root: str) -> list[str]:
    """Mount points at or below `root` in a /proc/<pid>/mountinfo text, deepest first (the order
    they can be unmounted in); a path mounted twice is listed twice."""
    prefix = root.rstrip("/") + "/"
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == root.rstrip("/") or point.startswith(prefix):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def shim_socket(address: str, namespace: str, shim_id: str) -> Path:
    """The socket containerd 1.6 gives the shim of `shim_id` (runtime/v2/shim.SocketAddress)."""
    return SHIM_SOCKETS / hashlib.sha256(os.path.join(address, namespace, shim_id).encode()).hexdigest()


def shim_arguments(cmdline: list[str]) -> tuple[str, str, str] | None:
    """(address, namespace, id) of a containerd-shim-runc-v2 command line, else None."""
    if not cmdline or not os.path.basename(cmdline[0]).startswith("containerd-shim"):
        return None
    flags = {cmdline[i]: cmdline[i + 1] for i in range(1, len(cmdline) - 1) if cmdline[i].startswith("-")}
    found = (flags.get("-address"), flags.get("-namespace"), flags.get("-id"))
    return found if all(found) else None  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- processes


def cgroup_dirs(name: str) -> list[Path]:
    return [h / name for h in sorted(CGROUP_FS.iterdir()) if (h / name).is_dir()] if CGROUP_FS.is_dir() else []


def cgroup_pids(name: str) -> set[int]:
    """Every process in the cgroup `name` or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for folder, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def kill_until_gone(find: Callable[[], Iterable[int]], timeout: float = 20) -> None:
    """SIGKILLs what `find` returns until it returns nothing (new processes may still appear while
    the first are dying: a shim starting a container)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in find() if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes still alive after {timeout:.0f}s: {list(find())}")


# ------------------------------------------------------------------------------------------ files


def sandbox_id_of_result(name: str, network: str) -> str | None:
    """The sandbox id in a CNI cache file name `<network>-<sandbox id>-<interface>`, else None."""
    if not name.startswith(network + "-"):
        return None
    sandbox_id, _, interface = name[len(network) + 1:].rpartition("-")
    return sandbox_id if sandbox_id and interface else None


def run_sandbox_ids(run: NodeRun) -> list[str]:
    """The pod sandboxes of `run`: containerd's folders of them, and the ones its network's CNI cache
    names (a sandbox being removed when the run stopped may be in only one of the two)."""
    sandboxes = cri_sandboxes(Path(run.root))
    ids = [p.name for p in sandboxes.iterdir()] if sandboxes.is_dir() else []
    if CNI_RESULTS.is_dir():
        ids += [i for p in CNI_RESULTS.iterdir() if (i := sandbox_id_of_result(p.name, run.cni_network))]
    return ids


def unmount_under(root: str) -> None:
    """Unmounts everything at or below `root`, deepest first; a busy mount is detached."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(5):
        points = mounts_under(Path("/proc/self/mountinfo").read_text(), root)
        if not points:
            return
        for point in points:
            if libc.umount2(point.encode(), 0) != 0:
                libc.umount2(point.encode(), _MNT_DETACH)
    left = mounts_under(Path("/proc/self/mountinfo").read_text(), root)
    if left:
        raise RuntimeError(f"still mounted under {root}: {left}")


def remove_cgroup(name: str) -> None:
    """Removes the cgroup `name` and its children in every hierarchy (they must be empty)."""
    for top in cgroup_dirs(name):
        for folder, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder)


def remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise RuntimeError(f"could not remove {path}")


# ----------------------------------------------------------------------------------------- a run


def clear(run: NodeRun) -> None:
    """Removes everything `run` made. Its own programs should have been stopped first (a clean stop);
    what is left (shims, containers, or all of it after a SIGKILL) is killed here."""
    sockets = []
    for pid in netns.namespace_pids(run.netns):
        found = shim_arguments(_cmdline(pid))
        if found and found[0] == run.containerd_socket:
            sockets.append(shim_socket(*found))
    sandbox_ids = set(run_sandbox_ids(run))
    kill_until_gone(lambda: netns.namespace_pids(run.netns))
    kill_until_gone(lambda: cgroup_pids(run.cgroup))
    for socket_path in sockets:
        socket_path.unlink(missing_ok=True)
    unmount_under(run.root)
    remove_cgroup(run.cgroup)
    netns.remove(run.netns_prefix, run.pid)
    if CNI_RESULTS.is_dir():
        for entry in CNI_RESULTS.glob(f"{run.cni_network}-*"):
            entry.unlink(missing_ok=True)
        for sandbox_id in sandbox_ids:  # the loopback network containerd adds to every sandbox
            (CNI_RESULTS / f"cni-loopback-{sandbox_id}-lo").unlink(missing_ok=True)
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(run.pod_logs.rstrip("/") + "/"):
                link.unlink(missing_ok=True)
    remove_tree(Path(run.root))
    remove_tree(Path(run.socket_dir))
    run.record.unlink(missing_ok=True)
    if not any(netns.pid_alive(int(p.stem)) for p in records_dir().glob("*.json") if p.stem.isdigit()):
        remove_empty_machine_folders()


def remove_empty_machine_folders() -> None:
    """The machine-wide folders containerd, the CNI plugins and the kubelet make on first use, when
    nothing is in them (rmdir fails on a folder that has anything: another runtime's is kept)."""
    for folder in (SHIM_SOCKETS, SHIM_SOCKETS.parent, CNI_RESULTS, CNI_RESULTS.parent, CONTAINER_LOG_LINKS):
        with contextlib.suppress(OSError):
            folder.rmdir()


def clear_stale() -> list[int]:
    """Clears every recorded run whose process is gone; returns their pids. Two starts at once take
    turns (a lock), so one run's leftovers are not cleared twice in parallel."""
    if not records_dir().exists():
        return []
    fd = os.open(records_dir() / "clear.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cleared = []
        for run in stale_runs():
            clear(run)
            cleared.append(run.pid)
        return cleared
    finally:
        os.close(fd)
