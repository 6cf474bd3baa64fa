#!/usr/bin/env bash
# One-time (and idempotent) setup of everything Flowkeeper's tests and demo need on a fresh Debian
# machine: Debian packages, the Python virtualenv, and the local control plane's Go binaries (cached
# outside the repository, keyed by version). Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "[setup] $*" >&2; }

# --- Debian packages: Prometheus (and promtool) for the tests, RabbitMQ for the end-to-end demo, and
# a JDK with Maven for the Kafka broker the dead-letter tests run (its jars come from Maven Central);
# buildah, mmdebstrap and runc build the container images here and run them (tests/support/images.py).
debs=(prometheus rabbitmq-server maven openjdk-17-jre-headless buildah mmdebstrap runc)
# The real node beside kwok: its container runtime, CNI plugins and the tools kube-proxy drives.
debs+=(containerd containernetworking-plugins iptables conntrack)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [[ $(id -u) == 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # Services must not start on install: the tests start their own instances on 127.0.0.1.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  [[ $made_policy == 1 ]] && $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

# --- Python: a virtualenv in the repo, reinstalled when pyproject.toml changes.
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.flowkeeper-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  log "installing Python dependencies"
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[test]' >&2
  rm -f .venv/.flowkeeper-*; touch "$stamp"
fi

# --- Go binaries of the local control plane (first build 10-25 minutes on 2 cores, then cached).
if [[ -z "${KUBEBUILDER_ASSETS:-}" ]]; then
  bash tests/cluster/build-binaries.sh "${@:-all}" >/dev/null
fi
log "ready"
