"""Starting and stopping the real programs the tests need (etcd, kube-apiserver, Prometheus, ...),
so that none outlives the test session: each runs in its own process group, dies with its parent
(PR_SET_PDEATHSIG with SIGKILL: an orphaned apiserver would wait for its etcd forever), and is
stopped by SIGTERM then SIGKILL."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


# Servers the tests start get ports below the kernel's ephemeral range: bind(0) and every outgoing
# connection draw from that range, so a port found free there can be a client's a moment later, and
# with pytest-xdist several sessions pick ports at once. Each worker counts through a slice of its
# own; a bind checks each port, since other programs may hold ports there too.
_SLICE = 1000
_next_port: int | None = None
_port_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_slice(worker: str, ephemeral_low: int) -> range:
    """The ports one process hands out: pytest-xdist worker gwN takes slice N + 1, any other process
    slice 0, all below `ephemeral_low`. Empty when the ephemeral range leaves no room below it."""
    slices = (ephemeral_low - 10000) // _SLICE
    if slices < 2:
        return range(0)
    index = int(worker[2:]) % (slices - 1) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = ephemeral_low - (index + 1) * _SLICE
    return range(start, start + _SLICE)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    global _next_port
    ports = port_slice(os.environ.get("PYTEST_XDIST_WORKER", ""), _ephemeral_low())
    with _port_lock:
        if not ports:
            return _any_free_port()
        if _next_port is None:  # processes sharing slice 0 (the demo beside a bench) start apart
            _next_port = ports.start + (os.getpid() * 7919) % len(ports)
        for _ in range(len(ports)):
            port = ports.start + (_next_port - ports.start) % len(ports)
            _next_port = port + 1
            if _bindable(port):
                return port
    return _any_free_port()  # every port of the slice is taken


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgrp()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Process:
    """One long-running program, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        """Asks the program to stop (SIGTERM to its process group) without waiting."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Ends the program abruptly (SIGKILL): no shutdown code of its own runs, as when a node dies."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self.popen = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        self.popen = None


def stop_all(processes: list[Process], timeout: float = 10.0) -> None:
    """Stops several programs at once: all are asked first, so their shutdowns overlap."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(timeout)


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: Process | None = None) -> None:
    """Polls `check` until it is true; fails with the process's log when it died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet: connection refused, 503, ...
            pass
        time.sleep(0.2)
    tail = f"\n{process.log_tail()}" if process else ""
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s{tail}")
