#!/usr/bin/env bash
# Builds Kubernetes components and etcd from their Go modules (no release
# download is reachable from Herald's build machines) into a cache outside
# the clone keyed by version, then links the cache to bin/k8s/<version>/ for
# envtest, `make dev` and the e2e cluster (hack/cluster). Each binary is
# built only when the cache lacks it: a warm cache costs nothing.
#
# usage: hack/control-plane.sh <bin-dir> [component...]   prints the assets directory
#   components: etcd and any of cmd/ in k8s.io/kubernetes that
#   hack/k8s/kubernetes/tools.go pins (kube-apiserver, kubelet, kube-proxy,
#   kube-controller-manager, kube-scheduler, kubectl).
#   Without components: kube-apiserver and etcd, what envtest needs.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$(mkdir -p "${1:-bin}" && cd "${1:-bin}" && pwd)"
shift || true
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(kube-apiserver etcd)
cache="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/k8s/v${K8S_VERSION}-etcd${ETCD_VERSION}"
assets="${bin_dir}/k8s/${K8S_VERSION}"

missing=()
for c in "${components[@]}"; do
	[[ -x "${cache}/${c}" ]] || missing+=("${c}")
done

try_setup_envtest() {
	# Where setup-envtest can download, it is the ordinary way for the two
	# binaries it ships; it is quick to fail when it cannot, and then we build.
	command -v setup-envtest >/dev/null 2>&1 || return 1
	local dir c
	for c in "${missing[@]}"; do
		[[ ${c} == kube-apiserver || ${c} == etcd ]] || return 1
	done
	dir="$(timeout 60 setup-envtest use -p path "${K8S_VERSION}" 2>/dev/null)" || return 1
	for c in "${missing[@]}"; do
		[[ -x "${dir}/${c}" ]] || return 1
	done
	for c in "${missing[@]}"; do cp "${dir}/${c}" "${tmp}/"; done
}

if [[ ${#missing[@]} -gt 0 ]]; then
	mkdir -p "${cache}"
	# One build at a time per cache: a second caller (envtest and cluster-up
	# started together) waits and then finds the binaries there.
	exec 9>"${cache}.lock"
	flock 9
	still=()
	for c in "${missing[@]}"; do [[ -x "${cache}/${c}" ]] || still+=("${c}"); done
	missing=("${still[@]+"${still[@]}"}")
fi

if [[ ${#missing[@]} -gt 0 ]]; then
	tmp="$(mktemp -d "${cache}.tmp.XXXXXX")"
	trap 'rm -rf "${tmp}"' EXIT
	if ! try_setup_envtest; then
		echo "building ${missing[*]} (Kubernetes v${K8S_VERSION}, etcd v${ETCD_VERSION}) from the Go module proxy (once; cached in ${cache})" >&2
		pkg=k8s.io/component-base/version
		minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
		ldflags="-s -w -X ${pkg}.gitVersion=v${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
		k8s_pkgs=()
		for c in "${missing[@]}"; do
			if [[ ${c} == etcd ]]; then
				(cd "${here}/k8s/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${tmp}/etcd" .)
			else
				k8s_pkgs+=("k8s.io/kubernetes/cmd/${c}")
			fi
		done
		# One go build for all Kubernetes commands: they share most packages,
		# and go builds them in parallel.
		if [[ ${#k8s_pkgs[@]} -gt 0 ]]; then
			(cd "${here}/k8s/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${tmp}/" "${k8s_pkgs[@]}")
		fi
	fi
	for c in "${missing[@]}"; do mv -f "${tmp}/${c}" "${cache}/${c}"; done
	rm -rf "${tmp}"
	trap - EXIT
fi

mkdir -p "$(dirname "${assets}")"
ln -sfn "${cache}" "${assets}"
echo "${assets}"
