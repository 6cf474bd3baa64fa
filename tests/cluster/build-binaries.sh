#!/usr/bin/env bash
# Builds the control-plane binaries the tests and `make cluster` use, from Go modules, into a cache
# folder outside the repository keyed by version, so only the first run pays for the build.
#
#   FLOWKEEPER_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/flowkeeper)
#   prints the bin folder on stdout; logs go to stderr.
#
# `keda` (KEDA's operator and metrics adapter, for the side-by-side bench) is not part of `all`: it
# has its own folder, keyed by KEDA's version, and prints that folder instead. `ksm`
# (kube-state-metrics, which tests scrape for the pods' owners and requests) is part of `all`, in a
# folder of its own keyed by its version (a new KSM does not rebuild the control plane); `ksm`
# alone prints that folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${FLOWKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowkeeper}"
bin="$cache/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
mkdir -p "$bin"
log() { echo "[build-binaries] $*" >&2; }

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=mod"

# Commands of k8s.io/kubernetes, built through the wrapper module in go/k8s; only the missing ones
# are built, so adding a target never rebuilds the binaries already in the folder.
build_k8s_cmds() {
  local what="$1"; shift
  local missing=()
  for b in "$@"; do [[ -x "$bin/$b" ]] || missing+=("$b"); done
  ((${#missing[@]})) || return 0
  log "building Kubernetes ${K8S_VERSION} ${what}: ${missing[*]}"
  local work; work="$(mktemp -d)"
  # Expanded now and cleared when it fires: it would fire again when the caller returns.
  trap "rm -rf '$work'; trap - RETURN" RETURN
  cp "$here/go/k8s/go.mod" "$here/go/k8s/tools.go" "$work/"
  [[ -f "$here/go/k8s/go.sum" ]] && cp "$here/go/k8s/go.sum" "$work/"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor} -X $pkg.gitTreeState=clean"
  done
  (cd "$work" && go mod download &&
    for b in "${missing[@]}"; do
      log "  go build $b"
      go build -trimpath -tags selinux,notest -ldflags "$ld" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" &&
        mv "$bin/$b.tmp" "$bin/$b"
    done)
}

build_k8s() {
  build_k8s_cmds "control plane (first time: 10-25 minutes on 2 cores)" \
    kube-apiserver kube-controller-manager kube-scheduler kubectl
}

# The real node's kubelet and kube-proxy (with the Go build cache warm from the control plane:
# well under a minute; cold: a few minutes).
build_node() {
  build_k8s_cmds "node" kubelet kube-proxy
}

build_etcd() {
  [[ -x "$bin/etcd" ]] && return 0
  log "building etcd ${ETCD_VERSION}"
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  cp "$here/go/etcd/"go.* "$here/go/etcd/tools.go" "$work/"
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  [[ -x "$bin/kwok" && -f "$bin/kwok-stages.yaml" ]] && return 0
  log "building kwok ${KWOK_VERSION}"
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}")
  # The standalone kwok refuses to start without stages: take the ones its module ships.
  local src; src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@${KWOK_VERSION}/kustomize/stage"
  : >"$bin/kwok-stages.yaml.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    { echo "---"; cat "$src/$f"; } >>"$bin/kwok-stages.yaml.tmp"
  done
  mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
}

build_helm() {
  [[ -x "$bin/helm" ]] && return 0
  log "building helm ${HELM_VERSION}"
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && GOBIN="$bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
}

# KEDA's operator (keda) and metrics adapter (keda-adapter): about 300 modules to download, then
# about 8 + 1.5 minutes of compiling on 2 cores the first time.
build_keda() {
  local want=(keda keda-adapter)
  local missing=0
  for b in "${want[@]}"; do [[ -x "$keda_bin/$b" ]] || missing=1; done
  [[ $missing == 1 ]] || return 0
  log "building KEDA ${KEDA_VERSION} (first time: about 10 minutes on 2 cores)"
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  cp "$here/go/keda/go.mod" "$here/go/keda/tools.go" "$work/"
  [[ -f "$here/go/keda/go.sum" ]] && cp "$here/go/keda/go.sum" "$work/"
  mkdir -p "$keda_bin"
  local ld="-s -w -X=github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
  (cd "$work" && go mod download github.com/kedacore/keda/v2 &&
    log "  go build keda" &&
    go build -trimpath -ldflags "$ld" -o "$keda_bin/keda.tmp" github.com/kedacore/keda/v2/cmd/operator &&
    log "  go build keda-adapter" &&
    go build -trimpath -ldflags "$ld" -o "$keda_bin/keda-adapter.tmp" github.com/kedacore/keda/v2/cmd/adapter &&
    mv "$keda_bin/keda.tmp" "$keda_bin/keda" && mv "$keda_bin/keda-adapter.tmp" "$keda_bin/keda-adapter")
}
keda_bin="$cache/bin/keda-${KEDA_VERSION}"

# kube-state-metrics from its own module through a wrapper module (go/ksm), with the version stamps
# its Makefile sets: about 6 minutes on 2 cores with empty Go caches (downloads included).
build_ksm() {
  [[ -x "$ksm_bin/kube-state-metrics" ]] && return 0
  log "building kube-state-metrics ${KSM_VERSION}"
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  cp "$here/go/ksm/go.mod" "$here/go/ksm/go.sum" "$here/go/ksm/tools.go" "$work/"
  mkdir -p "$ksm_bin"
  local ld="-s -w -X github.com/prometheus/common/version.Version=${KSM_VERSION}"
  ld+=" -X k8s.io/kube-state-metrics/v2/pkg/app.ClientGoVersion=${KSM_CLIENT_GO_VERSION}"
  (cd "$work" && go build -trimpath -ldflags "$ld" -o "$ksm_bin/kube-state-metrics.tmp" k8s.io/kube-state-metrics/v2 &&
    mv "$ksm_bin/kube-state-metrics.tmp" "$ksm_bin/kube-state-metrics")
}
ksm_bin="$cache/bin/ksm-${KSM_VERSION}"

targets=("${@:-all}")
for t in "${targets[@]}"; do
  case "$t" in
    all) build_etcd; build_kwok; build_k8s; build_node; build_helm; build_ksm ;;
    etcd) build_etcd ;; kwok) build_kwok ;; k8s) build_k8s ;; node) build_node ;; helm) build_helm ;;
    keda) build_keda; echo "$keda_bin"; exit 0 ;;
    ksm) build_ksm; echo "$ksm_bin"; exit 0 ;;
    *) log "unknown target $t"; exit 2 ;;
  esac
done
echo "$bin"
