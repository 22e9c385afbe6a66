#!/usr/bin/env bash
# Builds the local control plane from Go modules into a cache folder outside the repo, laid out like
# KUBEBUILDER_ASSETS: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, kwokctl,
# helm (kwokctl runs the local stack's control plane from the others: hack/localcluster.py).
# Prints the folder. A no-op when every binary is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath

cache_root=${MOEDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moedeploy}
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_$(go env GOOS)-$(go env GOARCH)"
out=${KUBEBUILDER_ASSETS:-$cache_root/testbin/$key}
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm)

complete() { for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done; }
# The Inference Extension's InferencePool CRD, from its Go module, for the chart's tests (no binary to build)
gaie_crd="$out/gateway-api-inference-extension-${GAIE_VERSION}/inferencepools.yaml"
fetch_gaie_crd() {
  [ -f "$gaie_crd" ] && return 0
  local dir
  dir=$(go mod download -json "sigs.k8s.io/gateway-api-inference-extension@v${GAIE_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$(dirname "$gaie_crd")"
  cp "$dir/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$gaie_crd"
  chmod u+w "$gaie_crd"
}
if complete; then fetch_gaie_crd; echo "$out"; exit 0; fi
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ "${MOEDEPLOY_BUILD_INTO_ASSETS:-}" != true ]; then
  echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks some of: ${binaries[*]}" >&2; exit 1
fi
mkdir -p "$out"
src=$cache_root/src
log() { echo "testbin: $*" >&2; }

# A wrapper module that requires $1@$2 with the given replace lines, then builds the packages $4.. into $out.
build_wrapped() {
  local module=$1 version=$2 ldflags=$3; shift 3
  local dir="$src/$(echo "$module" | tr '/' '_')-$version"
  mkdir -p "$dir"
  (
    cd "$dir"
    if [ ! -f go.mod ]; then
      go mod init moedeploy.dev/testbin >/dev/null 2>&1
      go mod edit -require="$module@v$version"
      [ -z "${REPLACES:-}" ] || while read -r from to; do go mod edit -replace="$from=$to"; done <<<"$REPLACES"
      go mod download "$module"
    fi
    # a wrapper needs every transitive module of its packages recorded (also of a package added to an existing
    # wrapper); 'go get' of the packages at the pinned version does that (without the version it would
    # upgrade the module to its latest release)
    go get "${@/%/@v$version}" >/dev/null
    go build -ldflags "-s -w $ldflags" -o "$out/" "$@"
  )
}

if [ ! -x "$out/kube-apiserver" ] || [ ! -x "$out/kube-controller-manager" ] || [ ! -x "$out/kube-scheduler" ] || [ ! -x "$out/kubectl" ]; then
  log "building Kubernetes v$K8S_VERSION (kube-apiserver, controller-manager, scheduler, kubectl): the slow part"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2); patch=$(echo "$K8S_VERSION" | cut -d. -f3)
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local folders;
  # a module that depends on it must point each one at the published v0.<minor>.<patch>.
  REPLACES=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1 \1@v0.'"$minor.$patch"'#p' "$gomod")
  vpkg() { for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      echo "-X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"; done; }
  REPLACES=$REPLACES build_wrapped k8s.io/kubernetes "$K8S_VERSION" "$(vpkg | tr '\n' ' ')" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
fi
if [ ! -x "$out/etcd" ]; then
  log "building etcd v$ETCD_VERSION"
  # etcd's server module replaces its siblings with local folders: a wrapper module uses the published ones
  build_wrapped go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
  # go names a binary after the last path element that is not a major version: "server"
  mv "$out/server" "$out/etcd"
fi
if [ ! -x "$out/kwok" ] || [ ! -x "$out/kwokctl" ]; then
  log "building kwok and kwokctl v$KWOK_VERSION"
  build_wrapped sigs.k8s.io/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
  # KWOK's stages, from its own module: hack/localcluster.py gives them to kwok through kwokctl
  rm -rf "$out/kwok-stages"
  cp -r "$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION/kustomize/stage" "$out/kwok-stages"
  chmod -R u+w "$out/kwok-stages"
fi
if [ ! -x "$out/helm" ]; then
  log "building helm v$HELM_VERSION"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  build_wrapped helm.sh/helm/v3 "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    helm.sh/helm/v3/cmd/helm
fi
complete || { log "incomplete build in $out"; exit 1; }
fetch_gaie_crd
echo "$out"
