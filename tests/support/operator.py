"""Runs the real `flowkeeper run` as a child process against the test cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.processes import Process, free_port, wait_until


class OperatorProcess:
    def __init__(self, env: dict[str, str], log_dir: Path, *args: str, name: str = "flowkeeper") -> None:
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        argv = [sys.executable, "-m", "flowkeeper.cli", "run", "--standalone", f"--metrics-port={self.metrics_port}", *args]
        self.process = Process(name, argv, log_dir, env=env)

    def start(self) -> OperatorProcess:
        self.process.start()
        wait_until(lambda: "controller loop running" in self.log(), 60, "the operator", self.process)
        return self

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace") if self.process.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
