"""Times when Deployments' spec.replicas change, from one `kubectl get --watch` stream (no polling:
the API requests a run counts stay the systems' own, and 100 Deployments are timed at once)."""

from __future__ import annotations

import subprocess
import threading
import time

from tests.support.cluster import LocalCluster, find_binary


class DeploymentWatch:
    """Every (monotonic time, spec.replicas) seen per Deployment of `namespace` since start()."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.argv = [find_binary("kubectl", cluster.bin_dir), "get", "deployments", "-n", namespace, "--watch",
                     "-o", 'jsonpath={.metadata.name} {.spec.replicas}{"\\n"}']
        self.env = cluster.env
        self.events: dict[str, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[str] | None = None
        self._stopped = threading.Event()
        self.restarts = 0  # watches the API server ended and that were started again
        self._thread: threading.Thread | None = None

    def start(self) -> DeploymentWatch:
        self._thread = threading.Thread(target=self._read, name="deployment-watch", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        # The API server closes a watch that falls behind (a burst of 1,000 scales did), and kubectl
        # then exits: watch again. The new watch lists first, so a change made in the gap is seen
        # late, never missed (its time is then an upper bound).
        while not self._stopped.is_set():
            self._popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env, bufsize=1)
            for line in self._popen.stdout:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    with self._lock:
                        self.events.setdefault(parts[0], []).append((time.monotonic(), int(parts[1])))
            self._popen.wait()
            if not self._stopped.is_set():
                self.restarts += 1

    def first_scale_up(self, name: str, after: float) -> float | None:
        """The first time after `after` that `name` was seen with more than one replica."""
        with self._lock:
            for at, replicas in self.events.get(name, ()):
                if at >= after and replicas > 1:
                    return at
        return None

    def scaled_down_after(self, after: float) -> set[str]:
        """The Deployments whose spec.replicas went down at some point after `after`."""
        lowered = set()
        with self._lock:
            for name, seen in self.events.items():
                previous = None
                for at, replicas in seen:
                    if previous is not None and at >= after and replicas < previous:
                        lowered.add(name)
                    previous = replicas
        return lowered

    def wait_scaled(self, started: dict[str, float], timeout: float) -> dict[str, float | None]:
        """Seconds from started[name] to that Deployment's first scale-up, for each name; None for
        those not scaled within `timeout` of the last start."""
        deadline = max(started.values()) + timeout
        while time.monotonic() < deadline:
            if all(self.first_scale_up(name, t) is not None for name, t in started.items()):
                break
            time.sleep(0.05)
        result = {}
        for name, t in started.items():
            at = self.first_scale_up(name, t)
            result[name] = None if at is None else round(at - t, 2)
        return result

    def stop(self) -> None:
        self._stopped.set()
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            self._popen.wait(10)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DeploymentWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
