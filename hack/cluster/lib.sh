# shellcheck shell=bash disable=SC2034 # settings used by the scripts that source this
# Shared settings of the e2e cluster scripts (up.sh, down.sh, images.sh).
# Sourced, not run. Everything the cluster writes is under ${CLUSTER_DIR};
# what it must touch outside (fixed kubelet/containerd paths, sysctls,
# iptables, bridges, cgroups) is recorded under ${HOST_DIR} by up.sh so that
# down.sh can undo exactly that.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
BIN="${BIN:-${REPO}/bin}"
CLUSTER_DIR="${CLUSTER_DIR:-${BIN}/cluster}"

# Kept across down/up: binaries, image tarballs, logs (for post-mortems).
CBIN="${CLUSTER_DIR}/bin"          # link to the version-keyed binary cache
IMAGES_DIR="${CLUSTER_DIR}/images" # image tarballs (images.sh)
LOGS="${CLUSTER_DIR}/logs"
# Runtime state, removed by down.sh.
STATE="${CLUSTER_DIR}/state"
HOST_DIR="${STATE}/host" # what the host looked like before up, and what up created
PIDS="${STATE}/pids"
PKI="${STATE}/pki"
KUBECONFIG_ADMIN="${CLUSTER_DIR}/kubeconfig"
CONTAINERD_SOCK="${STATE}/containerd/containerd.sock"
CONTAINERD_STATE="${STATE}/containerd/state"
KUBELET_DIR="${STATE}/kubelet"

# Names and private subnets that exist only inside this machine. The node
# IP sits alone on a bridge with no ports (there are no kernel modules for
# a dummy device); pods get their own bridge. Neither bridge has an uplink,
# and HERALD-EGRESS drops whatever a pod sends anywhere else.
NODE_NAME=herald-e2e
NODE_BRIDGE=hrld-node0
POD_BRIDGE=hrld-pods0
CNI_NETWORK=herald-e2e
NODE_CIDR=10.213.0.0/24
NODE_IP=10.213.0.1
POD_CIDR=10.214.0.0/24
POD_GATEWAY=10.214.0.1
SERVICE_CIDR=10.215.0.0/24
API_SERVICE_IP=10.215.0.1 # the `kubernetes` Service: first of SERVICE_CIDR
DNS_IP=10.215.0.10
CLUSTER_DOMAIN=cluster.local
API_PORT=6443
ETCD_CLIENT_PORT=12379 # not etcd's defaults: envtest or a dev etcd may run too
ETCD_PEER_PORT=12380
API_URL="https://${NODE_IP}:${API_PORT}"

# The images every pod runs; none can be pulled (images.sh builds them).
PAUSE_IMAGE=herald/pause:e2e
COREDNS_IMAGE=herald/coredns:e2e
NETCHECK_IMAGE=herald/netcheck:e2e
HERALD_IMAGE=herald:e2e
NATS_IMAGE=nats:e2e

# Components in the order up.sh starts them; down.sh stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# Paths outside CLUSTER_DIR that the kubelet and containerd use whatever
# they are told. up.sh records which of them did not exist before it ran;
# down.sh removes exactly those.
FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/netns /etc/cni /opt/cni /opt/containerd /var/lib/containerd /etc/kubernetes)

# Host settings the kubelet, kube-proxy or the CNI bridge plugin change.
# up.sh saves their values, down.sh puts them back.
SYSCTLS=(
	net.ipv4.ip_forward
	net.ipv4.conf.all.route_localnet
	net.bridge.bridge-nf-call-iptables
	net.bridge.bridge-nf-call-ip6tables
	kernel.panic
	kernel.panic_on_oops
	kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes
	vm.overcommit_memory
	vm.panic_on_oom
	net.netfilter.nf_conntrack_max
	net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

export PATH="${CBIN}:/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

# lock: one up, down or import at a time per cluster dir (an e2e run and a
# developer's make may overlap). up.sh runs down.sh with the lock held.
lock() {
	[[ -z ${HERALD_CLUSTER_LOCKED:-} ]] || return 0
	mkdir -p "${CLUSTER_DIR}"
	exec 8>"${CLUSTER_DIR}/.lock"
	flock 8
	export HERALD_CLUSTER_LOCKED=1
}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

kubectl_admin() { "${CBIN}/kubectl" --kubeconfig "${KUBECONFIG_ADMIN}" "$@"; }
ctr_k8s() { ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

# pid_of NAME: the recorded pid of a component, if it is still that process.
pid_of() {
	local f="${PIDS}/$1.pid" pid
	[[ -f ${f} ]] || return 1
	pid="$(<"${f}")"
	[[ -n ${pid} && -d /proc/${pid} ]] || return 1
	# A recycled pid would belong to another program.
	[[ "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == *"/$1"* ]] || return 1
	echo "${pid}"
}

# nft_chains: "family table chain" for every nf_tables chain (up.sh
# records them, down.sh removes the built-in ones iptables-nft added).
nft_chains() {
	nft list chains 2>/dev/null | awk '$1 == "table" {f = $2; t = $3} $1 == "chain" {print f, t, $2}'
}
# iptables_table FAMILY TABLE: whether iptables-nft manages that table.
iptables_table() {
	[[ $1 == ip || $1 == ip6 ]] && [[ $2 =~ ^(filter|nat|mangle|raw|security)$ ]]
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || { log "timed out after ${secs}s waiting for ${what}"; return 1; }
		sleep 0.2
	done
}
