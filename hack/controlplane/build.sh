#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane used by tests/cluster into .tools/controlplane/bin/:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (hack/controlplane/kubernetes)
#   etcd                                                              (hack/controlplane/etcd)
# from Go modules only (the module proxy; versions and checksums in the committed go.mod/go.sum).
#
# Usage: hack/controlplane/build.sh [BINARY...]     (default: all five)
#
# A binary is skipped when it exists and its stamp matches the hash of its module's go.mod/go.sum,
# this script and the Go version, so a second run is a no-op. The first build takes a while on a
# small machine (measured on 2 cores: see hack/controlplane/README.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
OUT="${CONTROLPLANE_BIN:-${ROOT}/.tools/controlplane/bin}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

export CGO_ENABLED=0            # static binaries, as the Kubernetes release builds its servers
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

ALL=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
if [[ $# -gt 0 ]]; then WANT=("$@"); else WANT=("${ALL[@]}"); fi

mod_version() { # module path, go.mod file -> version required there
  awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$2"
}

K8S_VERSION="$(mod_version k8s.io/kubernetes "${HERE}/kubernetes/go.mod")"
ETCD_VERSION="$(mod_version go.etcd.io/etcd/server/v3 "${HERE}/etcd/go.mod")"
[[ -n "${K8S_VERSION}" && -n "${ETCD_VERSION}" ]] || { echo "build.sh: cannot read pinned versions" >&2; exit 1; }

# What kube::version::ldflags (hack/lib/version.sh in kubernetes) sets for a release build. The
# module zip carries no git metadata, so the commit stays empty and the build date is the release's.
K8S_MINOR="${K8S_VERSION#v*.}"; K8S_MINOR="${K8S_MINOR%%.*}"
K8S_MAJOR="${K8S_VERSION#v}"; K8S_MAJOR="${K8S_MAJOR%%.*}"
K8S_BUILD_DATE="${K8S_BUILD_DATE:-$("${GO}" list -C "${HERE}/kubernetes" -m \
  -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null || true)}"
K8S_BUILD_DATE="${K8S_BUILD_DATE:-1970-01-01T00:00:00Z}"
k8s_ldflags() {
  local pkg flags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${K8S_MAJOR} -X ${pkg}.gitMinor=${K8S_MINOR}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit= -X ${pkg}.buildDate=${K8S_BUILD_DATE}"
  done
  echo "${flags}"
}

stamp_of() { # module dir -> hash of everything that decides the binaries built from it
  { cat "$1/go.mod" "$1/go.sum" "${BASH_SOURCE[0]}"; find "$1" -maxdepth 1 -name '*.go' -exec cat {} +; "${GO}" version; } |
    sha256sum | cut -c1-16
}

mkdir -p "${OUT}"
for bin in "${WANT[@]}"; do
  case "${bin}" in
    etcd) dir="${HERE}/etcd"; pkg=.; ldflags="-s -w"; version="${ETCD_VERSION}" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      dir="${HERE}/kubernetes"; pkg="k8s.io/kubernetes/cmd/${bin}"; ldflags="$(k8s_ldflags)"; version="${K8S_VERSION}" ;;
    *) echo "build.sh: unknown binary ${bin} (one of: ${ALL[*]})" >&2; exit 2 ;;
  esac
  stamp="${version} $(stamp_of "${dir}")"
  if [[ -x "${OUT}/${bin}" && "$(cat "${OUT}/.${bin}.stamp" 2>/dev/null)" == "${stamp}" ]]; then
    echo "${bin} ${version}: up to date"
    continue
  fi
  echo "${bin} ${version}: building ..."
  start=${SECONDS}
  rm -f "${OUT}/.${bin}.stamp"
  (cd "${dir}" && "${GO}" build -ldflags "${ldflags}" -o "${OUT}/${bin}.tmp" "${pkg}")
  mv -f "${OUT}/${bin}.tmp" "${OUT}/${bin}"
  echo "${stamp}" > "${OUT}/.${bin}.stamp"
  echo "${bin} ${version}: built in $((SECONDS - start))s"
done
