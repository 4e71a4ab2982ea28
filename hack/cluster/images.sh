#!/usr/bin/env bash
# Builds the e2e cluster's images as tarballs under bin/cluster/images and,
# when the cluster's containerd is running, imports them into it. Nothing
# is pulled: each image is a static binary packed onto an empty base by
# hack/images (go-containerregistry).
#
#   herald/pause:e2e     sandbox process (hack/images/pause)
#   herald/coredns:e2e   cluster DNS (hack/k8s/coredns, cached by version)
#   herald/netcheck:e2e  network probe for specs (hack/images/netcheck)
#   herald:e2e           bin/herald, shaped like the Dockerfile's image
#   nats:e2e             bin/nats-server
#
# bin/herald and bin/nats-server come from `make build nats-server`
# (the Makefile's cluster-images target runs those first).
#
# usage: hack/cluster/images.sh [build|import|all]   (default all)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

what="${1:-all}"
tools="${IMAGES_DIR}/bin"
cache_root="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}"

build_coredns() {
	# CoreDNS takes minutes to build: cache it outside the clone by version.
	local version dir
	version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "${REPO}/hack/k8s/coredns/go.mod")"
	[[ -n ${version} ]] || die "no CoreDNS version in hack/k8s/coredns/go.mod"
	dir="${cache_root}/coredns/${version}"
	if [[ ! -x ${dir}/coredns ]]; then
		log "building CoreDNS ${version} from the Go module proxy (once; cached in ${dir})"
		mkdir -p "${dir}"
		(cd "${REPO}/hack/k8s/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${dir}/coredns.tmp" .)
		mv -f "${dir}/coredns.tmp" "${dir}/coredns"
	fi
	ln -sfn "${dir}/coredns" "${tools}/coredns"
}

# pack -o OUT ARGS...: imagepack, unless OUT was packed from the same
# arguments and file contents already (go and make rewrite binaries even
# when nothing changed, so times say nothing). Packing is reproducible, so
# skipping changes nothing but the time.
pack() {
	local out=$2 key a
	key="$(
		printf '%s\n' "$@"
		for a in "$@"; do
			[[ ${a} == *=/* && -f ${a%%=*} ]] && sha256sum "${a%%=*}" | cut -d' ' -f1
		done
		sha256sum "${tools}/imagepack" | cut -d' ' -f1
	)"
	[[ -f ${out} && -f ${out}.key && "$(<"${out}.key")" == "${key}" ]] && return 0
	"${tools}/imagepack" "$@"
	printf '%s\n' "${key}" >"${out}.key"
}

build() {
	mkdir -p "${tools}"
	[[ -x ${BIN}/herald ]] || die "${BIN}/herald is missing: run make build"
	[[ -x ${BIN}/nats-server ]] || die "${BIN}/nats-server is missing: run make nats-server"
	# The packer and the two small programs are quick to rebuild; go's
	# build cache makes an unchanged rebuild nearly free.
	(cd "${REPO}/hack/images" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${tools}/" . ./pause ./netcheck)
	mv -f "${tools}/images" "${tools}/imagepack"
	build_coredns

	local out="${IMAGES_DIR}"
	pack -o "${out}/pause.tar" -t "${PAUSE_IMAGE}" -f "${tools}/pause=/pause" \
		-entrypoint /pause -user 65535:65535
	pack -o "${out}/coredns.tar" -t "${COREDNS_IMAGE}" -f "$(readlink -f "${tools}/coredns")=/coredns" \
		-entrypoint /coredns -user 65532:65532
	pack -o "${out}/netcheck.tar" -t "${NETCHECK_IMAGE}" -f "${tools}/netcheck=/netcheck" \
		-entrypoint /netcheck -user 65532:65532
	# Same shape as the Dockerfile's image on distroless static: /herald,
	# nonroot, CA certificates for HTTPS endpoints.
	local certs=()
	[[ -f /etc/ssl/certs/ca-certificates.crt ]] && certs=(-f /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt:0644)
	pack -o "${out}/herald.tar" -t "${HERALD_IMAGE}" -f "${BIN}/herald=/herald" "${certs[@]}" \
		-entrypoint /herald -user 65532:65532
	# JetStream's default store is under /tmp; /data is there for -sd /data
	# without a volume.
	pack -o "${out}/nats.tar" -t "${NATS_IMAGE}" -f "${BIN}/nats-server=/nats-server" \
		-d /data:0755:65532:65532 -entrypoint /nats-server -user 65532:65532
	log "images packed in ${out}"
}

import() {
	if ! ctr --address "${CONTAINERD_SOCK}" version >/dev/null 2>&1; then
		log "the cluster's containerd is not running: images not imported (make cluster-up imports them)"
		return 0
	fi
	local t
	for t in "${IMAGES_DIR}"/*.tar; do
		# Unpacked into overlayfs now, so the first pod starts without delay.
		ctr_k8s images import --snapshotter overlayfs "${t}" >/dev/null
	done
	# Shown as pods name them: containerd adds the default registry host
	# and library/ path.
	log "imported: $(ctr_k8s images ls -q | grep -v '^sha256:' | sed -E 's#^[^/]+[.][^/]+/##; s#^library/##' | sort | tr '\n' ' ')"
}

case "${what}" in
build) build ;;
import) import ;;
all) build && import ;;
*) die "usage: $0 [build|import|all]" ;;
esac
