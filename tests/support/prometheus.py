"""A real Prometheus for the tests: the Debian `prometheus` binary with a temp config and TSDB,
listening on 127.0.0.1 and a free port, scraping the caller's static targets every second.

    with LocalPrometheus(targets=[exporter.target]) as prometheus:
        prometheus.wait_for('up{job="exporter"}', lambda r: r and r[0]["value"][1] == "1")
        prometheus.stop()    # an outage, as the operator sees it
        prometheus.start()   # back on the same port, with the data scraped so far

Nothing outlives it: the process dies with the test run (processes.Process), and close() - also run
at exit and when the object is collected - stops it and removes the temp folder.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.processes import Process, free_port, wait_until


def find_tool(name: str) -> str:
    """`prometheus` / `promtool` on PATH, else where the Debian package puts them."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the Debian package `prometheus` (scripts/setup.sh does)")
    return found


def prometheus_config(
    targets: Sequence[str], scrape_interval: str, jobs: Sequence[dict[str, Any]] = (), rule_files: Sequence[Path] = ()
) -> str:
    """prometheus.yml: the static targets under job `exporter`, then `jobs` (further scrape configs:
    kube-state-metrics, a kubelet, ...) as their callers write them; rules evaluated every scrape."""
    # JSON is YAML: no dependency, no quoting surprises. honor_labels keeps exported labels such as
    # `namespace` or `job`-like names as the exporter wrote them, as for a federated source.
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval, "scrape_timeout": scrape_interval},
        "scrape_configs": [
            {"job_name": "exporter", "honor_labels": True, "static_configs": [{"targets": list(targets)}]},
            *jobs,
        ],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    return json.dumps(config, indent=2)


def _cleanup(process: Process, workdir: Path) -> None:
    process.stop()
    shutil.rmtree(workdir, ignore_errors=True)


class LocalPrometheus:
    def __init__(
        self, targets: Sequence[str], *, scrape_interval: str = "1s", port: int | None = None, data_dir: Path | None = None,
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.binary = find_tool("prometheus")
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="flowkeeper-prometheus-"))
        self.config_file = self.workdir / "prometheus.yml"
        self._targets, self._scrape_interval = list(targets), scrape_interval
        self._jobs: dict[str, dict[str, Any]] = {}
        self._rule_files = list(rule_files)
        self._write_config()
        self.process = Process(
            "prometheus",
            [
                self.binary,
                f"--config.file={self.config_file}",
                # data_dir: a TSDB made beforehand (e.g. backfilled with promtool) to query history.
                f"--storage.tsdb.path={data_dir or self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",  # /-/reload after set_targets()
                "--storage.tsdb.retention.time=3h",
                "--log.level=warn",
            ],
            self.workdir,
        )
        # Backstops for a test run that dies before close(): at exit, or when this object goes away.
        self._finalizer = weakref.finalize(self, _cleanup, self.process, self.workdir)
        atexit.register(self._finalizer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check_config(self) -> None:
        """promtool's verdict on the generated config (raises with its output)."""
        subprocess.run([find_tool("promtool"), "check", "config", str(self.config_file)], check=True, capture_output=True, text=True)

    def start(self, timeout: float = 60) -> LocalPrometheus:
        if not self.process.running:
            self.process.start()
        wait_until(self._ready, timeout, "prometheus", self.process)
        return self

    def _ready(self) -> bool:
        with self._get("/-/ready") as response:
            return response.status == 200

    def stop(self) -> None:
        self.process.stop()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def set_targets(self, targets: Sequence[str], scrape_interval: str = "1s") -> None:
        self._targets, self._scrape_interval = list(targets), scrape_interval
        self._reload()

    def add_scrape_job(self, job: dict[str, Any]) -> None:
        """Adds (or replaces, by job_name) a scrape config and reloads a running Prometheus."""
        self._jobs[job["job_name"]] = job
        self._reload()

    def remove_scrape_job(self, job_name: str) -> None:
        self._jobs.pop(job_name, None)
        self._reload()

    def _write_config(self) -> None:
        self.config_file.write_text(prometheus_config(self._targets, self._scrape_interval, list(self._jobs.values()), self._rule_files))

    def _reload(self) -> None:
        self._write_config()
        if self.process.running:  # a stopped one reads the file when it starts
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"), timeout=10).close()

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts of the loaded rules, pending or firing, as /api/v1/alerts lists them."""
        with self._get("/api/v1/alerts") as response:
            return json.load(response)["data"]["alerts"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query (raises on an error answer)."""
        with self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def wait_for(self, promql: str, predicate: Callable[[list[dict[str, Any]]], Any] = bool, timeout: float = 30) -> list[dict[str, Any]]:
        """Polls the query until predicate(result) is true; returns that result."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.query(promql)
                if predicate(last):
                    return last
            except OSError as exc:  # not up (yet): connection refused, reset
                last = exc
            time.sleep(0.25)
        raise TimeoutError(f"{promql!r} did not satisfy the predicate within {timeout}s; last: {last!r}")

    def _get(self, path: str):
        return urllib.request.urlopen(f"{self.url}{path}", timeout=10)
