"""Network namespaces the test support makes for itself, each joined to the host by a veth pair with
private addresses, and a small TCP relay on the host end of such a pair.

Who uses one: the KEDA peer bench (its metrics adapter must listen on an address an EndpointSlice
accepts, which loopback is not) and the real node (kubelet, containerd and kube-proxy, whose node IP
must not be loopback). Nothing leaves the machine: the only addresses in play are 127.0.0.1 and the
ends of the pairs, which exist only while a run does.

    with NetNamespace("fkpeer") as ns:     # needs root (ip netns / ip link)
        ns.name                            # fkpeer-<pid>: one namespace per user and process
        ns.host_ip, ns.inner_ip            # e.g. 10.213.0.1 and 10.213.0.2 (a free /30 of 10.213/16)
        ns.wrap(["keda-adapter", ...])     # argv that runs inside the namespace
        relay = TcpRelay(ns.host_ip, ("127.0.0.1", api_port)).start()   # a way back to the host

Names carry the pid of the process that made them, so a later run can tell a killed run's leftovers
(pid gone) from a live run's: remove_stale(prefix).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import selectors
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

POOL = ipaddress.ip_network("10.213.0.0/16")  # private; /30s of it are handed out to veth pairs
MAX_PREFIX = 7  # link names are at most 15 characters: <prefix>h<pid up to 7 digits>


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def names(prefix: str, pid: int) -> tuple[str, str, str]:
    """(namespace, host link, inner link) of the run of process `pid`."""
    if not 0 < len(prefix) <= MAX_PREFIX or not prefix.isalnum():
        raise ValueError(f"prefix must be 1-{MAX_PREFIX} letters or digits: {prefix!r}")
    return f"{prefix}-{pid}", f"{prefix}h{pid}", f"{prefix}n{pid}"


def _owner(name: str, start: str) -> int | None:
    rest = name[len(start):] if name.startswith(start) else ""
    return int(rest) if rest.isdigit() else None


def namespace_owners(prefix: str) -> set[int]:
    """Pids of the runs that have a namespace or a host link of `prefix` on this machine."""
    owners = set()
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        if line.split() and (pid := _owner(line.split()[0], prefix + "-")) is not None:
            owners.add(pid)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if (pid := _owner(link, prefix + "h")) is not None:
            owners.add(pid)
    return owners


def stale_owners(prefix: str) -> set[int]:
    """Pids of runs (of `prefix`) that left a namespace or link behind and are gone (SIGKILL)."""
    return {pid for pid in namespace_owners(prefix) if not pid_alive(pid)}


def remove(prefix: str, pid: int) -> None:
    """Deletes the namespace and host link of run `pid` (idempotent). Deleting the namespace
    destroys the inner end, and with it the pair, once no process is left in it; the link delete
    is the backstop for a namespace that still has one."""
    namespace, host_link, _ = names(prefix, pid)
    _ip("netns", "del", namespace, check=False)
    _ip("link", "del", host_link, check=False)


def remove_stale(prefix: str) -> None:
    """Namespaces and links of earlier runs whose process is gone (a run killed with SIGKILL)."""
    for pid in stale_owners(prefix):
        remove(prefix, pid)


def namespace_pids(namespace: str) -> list[int]:
    """Processes whose network namespace is `namespace` (`ip netns pids`)."""
    out = _ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def used_networks() -> list[ipaddress.IPv4Network]:
    """Networks of this machine's addresses and routes: a subnet handed out must overlap none."""
    used = []
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        destination = line.split()[0] if line.split() else ""
        if destination and destination != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(destination, strict=False))
    return used


def free_subnet(pool: ipaddress.IPv4Network, prefixlen: int, used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first subnet of `pool` with `prefixlen` that overlaps none of `used`."""
    for subnet in pool.subnets(new_prefix=prefixlen):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /{prefixlen} left in {pool}")


@contextlib.contextmanager
def address_lock() -> Iterator[None]:
    """Held while a run picks a subnet and puts it on a link, so two runs starting at once do not
    pick the same one."""
    fd = os.open(Path(tempfile.gettempdir()) / "flowkeeper-netns.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class NetNamespace:
    """`ip netns` namespace <prefix>-<pid> with loopback up and a veth pair: <prefix>h<pid> on the
    host (host_ip/30), <prefix>n<pid> inside (inner_ip/30). start(route_pool=...) also picks a free
    subnet of that pool (`routed`: a pod network behind the inner end, say) and routes it from the
    host through the pair. close() removes the namespace and the pair (idempotent; also at exit)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pid = os.getpid()
        self.name, self.host_link, self.inner_link = names(prefix, self.pid)
        self.host_ip = self.inner_ip = ""
        self.routed: ipaddress.IPv4Network | None = None
        self._made = False

    def start(self, route_pool: ipaddress.IPv4Network | None = None, route_prefixlen: int = 24) -> NetNamespace:
        if os.geteuid() != 0:
            raise PermissionError("making a network namespace needs root (ip netns, ip link)")
        remove_stale(self.prefix)
        self._made = True
        atexit.register(self.close)
        try:
            with address_lock():  # until the addresses and the route are on the links
                used = used_networks()
                host, inner = list(free_subnet(POOL, 30, used).hosts())
                self.host_ip, self.inner_ip = str(host), str(inner)
                _ip("netns", "add", self.name)
                _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
                _ip("link", "set", self.inner_link, "netns", self.name)
                _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
                _ip("link", "set", self.host_link, "up")
                self.exec_ip("addr", "add", f"{self.inner_ip}/30", "dev", self.inner_link)
                self.exec_ip("link", "set", self.inner_link, "up")
                self.exec_ip("link", "set", "lo", "up")
                if route_pool is not None:
                    self.routed = free_subnet(route_pool, route_prefixlen, used)
                    _ip("route", "replace", str(self.routed), "via", self.inner_ip, "dev", self.host_link)
        except BaseException:
            self.close()
            raise
        return self

    def exec_ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.name, *args)

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace. nsenter enters the network namespace only (`ip netns exec`
        would also give each program a mount namespace of its own, where the mounts one makes are
        invisible to another, and to the host's cleanup) and execs argv: same pid, same process group."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--", *argv]

    def pids(self) -> list[int]:
        return namespace_pids(self.name)

    def close(self) -> None:
        if not self._made:
            return
        self._made = False
        remove(self.prefix, self.pid)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def exists(self) -> bool:
        return Path(f"/run/netns/{self.name}").exists() or _ip("link", "show", self.host_link, check=False).returncode == 0

    def __enter__(self) -> NetNamespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpRelay:
    """Accepts on (listen_host, a free port) and pipes each connection to `target`, byte for byte
    (TLS passes through untouched). One thread, a selector; close() ends every connection."""

    def __init__(self, listen_host: str, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server((listen_host, port), backlog=64)
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"relay-{self.address[1]}", daemon=True)
        self.connections = 0

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> TcpRelay:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(Exception):
                self._selector.unregister(s)
            s.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                if sock is self._listener:
                    try:
                        client, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    try:
                        upstream = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        client.close()
                        continue
                    self.connections += 1
                    for s in (client, upstream):
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self._selector.register(s, selectors.EVENT_READ)
                    self._peers[client], self._peers[upstream] = upstream, client
                    continue
                other = self._peers.get(sock)
                if other is None:
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._close_pair(sock)
                    continue
                try:
                    other.setblocking(True)
                    other.settimeout(10)
                    other.sendall(data)
                    other.setblocking(False)
                except OSError:
                    self._close_pair(sock)
        for sock in list(self._peers):
            self._close_pair(sock)
        self._selector.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
