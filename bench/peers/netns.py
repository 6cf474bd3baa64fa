"""A network namespace the bench makes for itself, joined to the host by a veth pair with private
addresses, and a small TCP relay on the host end of that pair.

kube-apiserver refuses loopback addresses in an EndpointSlice, so an extension API server (KEDA's
metrics adapter) that an APIService routes to must listen on some other address of this machine: it
runs inside the namespace, on the inner end of the veth. Nothing leaves the machine: the only
addresses in play are 127.0.0.1 and the two ends of the pair, which exist only while the bench runs.

    with NetNamespace() as ns:            # needs root (ip netns / ip link)
        ns.host_ip, ns.inner_ip           # e.g. 10.213.0.1 and 10.213.0.2 (a free /30 of 10.213/16)
        ns.wrap(["keda-adapter", ...])    # argv that runs inside the namespace
        relay = TcpRelay(ns.host_ip, ("127.0.0.1", api_port)).start()   # a way back to the host
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import selectors
import socket
import subprocess
import threading
from pathlib import Path

PREFIX = "fkpeer"  # names of the namespaces and host-side links this module makes: fkpeer-<pid>
POOL = ipaddress.ip_network("10.213.0.0/16")  # private; /30s of it are handed out to runs


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Namespaces and links of earlier runs whose process is gone (a run killed with SIGKILL)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX + "-") and name.rsplit("-", 1)[1].isdigit() and not _pid_alive(int(name.rsplit("-", 1)[1])):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(PREFIX + "h") and link[len(PREFIX) + 1:].isdigit() and not _pid_alive(int(link[len(PREFIX) + 1:])):
            _ip("link", "del", link, check=False)


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return used


class NetNamespace:
    """`ip netns` namespace fkpeer-<pid> with loopback up and a veth pair: fkpeerh<pid> on the host
    (host_ip/30), fkpeern<pid> inside (inner_ip/30). close() removes both (idempotent; also at exit)."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.name = f"{PREFIX}-{pid}"
        self.host_link = f"{PREFIX}h{pid}"[:15]
        self.inner_link = f"{PREFIX}n{pid}"[:15]
        self.host_ip = self.inner_ip = ""
        self._made = False

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _used_networks()
        for subnet in POOL.subnets(new_prefix=30):
            if not any(subnet.overlaps(u) for u in used):
                return subnet
        raise RuntimeError(f"no free /30 left in {POOL}")

    def start(self) -> NetNamespace:
        if os.geteuid() != 0:
            raise PermissionError("the KEDA peer bench makes a network namespace: it needs root (ip netns, ip link)")
        remove_stale()
        subnet = self._pick_subnet()
        host, inner = list(subnet.hosts())
        self.host_ip, self.inner_ip = str(host), str(inner)
        self._made = True
        atexit.register(self.close)
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
            _ip("link", "set", self.inner_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            self.exec_ip("addr", "add", f"{self.inner_ip}/30", "dev", self.inner_link)
            self.exec_ip("link", "set", self.inner_link, "up")
            self.exec_ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def exec_ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.name, *args)

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace (`ip netns exec` execs it: same pid, same process group)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def close(self) -> None:
        if not self._made:
            return
        self._made = False
        # Deleting the namespace destroys the inner end, and with it the pair; the link delete is
        # the backstop for a namespace that still has a process in it.
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_link, check=False)
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
