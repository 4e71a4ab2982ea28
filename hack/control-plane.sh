#!/usr/bin/env bash
# Builds kube-apiserver and etcd from their Go modules (setup-envtest cannot
# download on Herald's build machines) into a cache outside the clone keyed
# by version, then links them into bin/k8s/<version>/ for envtest and
# `make dev`. Idempotent: a warm cache costs nothing.
#
# usage: hack/control-plane.sh <bin-dir>   prints the assets directory
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$(mkdir -p "${1:-bin}" && cd "${1:-bin}" && pwd)"
cache="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/k8s/v${K8S_VERSION}-etcd${ETCD_VERSION}"
assets="${bin_dir}/k8s/${K8S_VERSION}"

try_setup_envtest() {
	# Where setup-envtest can download, it is the ordinary way; it is quick to
	# fail when it cannot, and then we build.
	command -v setup-envtest >/dev/null 2>&1 || return 1
	local dir
	dir="$(timeout 60 setup-envtest use -p path "${K8S_VERSION}" 2>/dev/null)" || return 1
	[[ -x "${dir}/kube-apiserver" && -x "${dir}/etcd" ]] || return 1
	cp "${dir}/kube-apiserver" "${dir}/etcd" "${tmp}/"
}

if [[ ! -x "${cache}/kube-apiserver" || ! -x "${cache}/etcd" ]]; then
	mkdir -p "$(dirname "${cache}")"
	tmp="$(mktemp -d "${cache}.tmp.XXXXXX")"
	trap 'rm -rf "${tmp}"' EXIT
	if ! try_setup_envtest; then
		echo "building kube-apiserver v${K8S_VERSION} and etcd v${ETCD_VERSION} from the Go module proxy (once; cached in ${cache})" >&2
		pkg=k8s.io/component-base/version
		minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
		ldflags="-s -w -X ${pkg}.gitVersion=v${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
		(cd "${here}/k8s/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${tmp}/etcd" .)
		(cd "${here}/k8s/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${tmp}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
	fi
	rm -rf "${cache}" && mv "${tmp}" "${cache}"
	trap - EXIT
fi

mkdir -p "$(dirname "${assets}")"
ln -sfn "${cache}" "${assets}"
echo "${assets}"
