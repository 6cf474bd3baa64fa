"""Runs the real `flowkeeper run` as a child process against the test cluster."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from tests.support.processes import Process, free_port, wait_until


class OperatorProcess:
    def __init__(self, env: dict[str, str], log_dir: Path, *args: str, name: str = "flowkeeper", standalone: bool = True) -> None:
        """`standalone`: no leader election (the replica acts at once); False: pass the --lease-* options in args."""
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        election = ["--standalone"] if standalone else []
        argv = [sys.executable, "-m", "flowkeeper.cli", "run", *election, f"--metrics-port={self.metrics_port}", *args]
        self.process = Process(name, argv, log_dir, env=env)

    def start(self) -> OperatorProcess:
        self.process.start()
        wait_until(lambda: "controller loop running" in self.log(), 60, "the operator", self.process)
        return self

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace") if self.process.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def metric(self, name: str, *, timeout: float = 5, **labels: str) -> float:
        """The sum of a series of this operator's own /metrics with these labels (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.metrics_url, timeout=timeout).read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
