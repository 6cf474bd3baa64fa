"""The real helm on the flowkeeper chart: `render_chart` is `helm template` parsed into documents.

    documents = render_chart("flowkeeper", "flowkeeper-system", "watchNamespaces={team-a}", "replicaCount=1")

helm comes from the same version-keyed binary cache as kubectl and the control plane
(tests/cluster/build-binaries.sh, built on first use); it renders for the Kubernetes version the local
control plane runs (tests/cluster/versions.env), so `kubeVersion` checks and Capabilities match it.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import yaml

from tests.support.cluster import REPO, build_cache

CHART = REPO / "charts" / "flowkeeper"
VERSIONS = REPO / "tests" / "cluster" / "versions.env"


class HelmError(RuntimeError):
    """helm exited non-zero; `stderr` says why (a schema refusal, a template's `fail`, ...)."""

    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)}:\n{stderr}")
        self.stderr = stderr


@functools.cache
def helm_binary() -> str:
    """The helm of the binary cache (build-binaries.sh builds it on first use, then is a no-op)."""
    return str(build_cache("helm") / "helm")


@functools.cache
def kube_version() -> str:
    """The Kubernetes version of the local control plane (K8S_VERSION in versions.env)."""
    for line in VERSIONS.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "K8S_VERSION":
            return value.strip().strip("\"'")
    raise LookupError(f"no K8S_VERSION in {VERSIONS}")


def helm(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Runs helm with these arguments (and `env`, e.g. a cluster's KUBECONFIG) and returns its standard
    output; HelmError when it fails."""
    argv = [helm_binary(), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if result.returncode != 0:
        raise HelmError(list(args), result.stderr)
    return result.stdout


def _value_args(set_args: tuple[str, ...]) -> list[str]:
    """`key=value` becomes `--set key=value`; an argument that starts with "-" (`--set-string=a=1`,
    `--values=file.yaml`, `--show-only=templates/x.yaml`) is passed to helm as it is."""
    args: list[str] = []
    for arg in set_args:
        args.extend([arg] if arg.startswith("-") else ["--set", arg])
    return args


def template(release: str, namespace: str, *set_args: str, chart: Path = CHART) -> str:
    """`helm template` output, as text."""
    return helm(
        "template", release, str(chart), "--namespace", namespace, "--kube-version", kube_version(), *_value_args(set_args)
    )


def render_chart(release: str, namespace: str, *set_args: str, chart: Path = CHART) -> list[dict]:
    """The chart's objects for a release in `namespace` with these values (`key=value` each, as for
    `--set`), in helm's install order. Namespaced objects carry their namespace; HelmError when helm
    refuses the values or a template fails."""
    return [document for document in yaml.safe_load_all(template(release, namespace, *set_args, chart=chart)) if document]


def lint(*set_args: str, chart: Path = CHART) -> str:
    """`helm lint --strict` with these values; HelmError when it finds anything."""
    return helm("lint", "--strict", str(chart), "--kube-version", kube_version(), *_value_args(set_args))
