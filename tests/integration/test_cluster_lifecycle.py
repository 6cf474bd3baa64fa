"""`make cluster` / `make cluster-down` (python -m tests.support.cluster up|down) start and stop the
control plane, leaving no process and no folder behind, also when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cluster import REPO
from tests.support.cluster_fixtures import eventually

pytestmark = pytest.mark.cluster


def control_plane_pids(state: Path) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if str(state) in line and "tests.support.cluster" not in line]


@pytest.mark.parametrize("stop", ["down", "interrupt"])
def test_up_then_down_leaves_nothing_behind(tmp_path: Path, stop: str, cluster) -> None:
    # `cluster` only makes sure the binaries are built before the clock starts.
    state = tmp_path / "state"
    ready = tmp_path / "ready"
    env = {**os.environ, "FLOWKEEPER_CLUSTER_DIR": str(state)}
    up = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cluster", "up", "--detach-ready-file", str(ready)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        eventually(ready.exists, timeout=120, what="the cluster up")
        kubeconfig = ready.read_text()
        assert Path(kubeconfig).exists()
        assert len(control_plane_pids(state)) >= 5  # etcd, apiserver, controller-manager, scheduler, kwok
        if stop == "down":
            down = subprocess.run([sys.executable, "-m", "tests.support.cluster", "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
            assert down.returncode == 0, down.stdout + down.stderr
        else:
            up.send_signal(signal.SIGINT)  # Ctrl-C
        up.wait(timeout=60)
        assert up.returncode == 0, up.stdout.read() if up.stdout else ""
    finally:
        if up.poll() is None:
            up.kill()
    time.sleep(0.5)
    assert control_plane_pids(state) == []
    assert not state.exists()
