#!/usr/bin/env bash
# Starts the single-node e2e cluster: containerd, etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables)
# and CoreDNS, all built from source and run from bin/cluster/. Nothing is
# pulled and no traffic leaves the machine. See hack/cluster/README.md.
#
# On a healthy running cluster it does nothing; a broken or half-started
# one is torn down (down.sh) and started again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ ${EUID} -eq 0 ]] || die "the cluster needs root (containerd, bridges, iptables)"
# Unix socket paths (containerd's, the kubelet's) are limited to 107 bytes.
((${#CLUSTER_DIR} <= 60)) || die "${CLUSTER_DIR} is too long for the sockets under it: set CLUSTER_DIR to a shorter directory"
t0=${SECONDS}
lock

healthy() {
	local c
	for c in "${COMPONENTS[@]}"; do pid_of "${c}" >/dev/null || return 1; done
	kubectl_admin get --raw /readyz >/dev/null 2>&1 || return 1
	[[ "$(kubectl_admin get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

if [[ -d ${STATE} ]]; then
	if healthy; then
		log "the cluster is already up (KUBECONFIG=${KUBECONFIG_ADMIN})"
		exit 0
	fi
	log "a previous cluster is partly there: tearing it down first"
	"${REPO}/hack/cluster/down.sh"
fi

# The runtime and network tools, from Debian when a fresh machine lacks them.
"${REPO}/hack/cluster/host-packages.sh"

# --- binaries and images (cached; nothing to do when warm) ----------------
assets="$(K8S_VERSION=${K8S_VERSION} ETCD_VERSION=${ETCD_VERSION} "${REPO}/hack/control-plane.sh" "${BIN}" \
	kube-apiserver etcd kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)"
mkdir -p "${CLUSTER_DIR}"
ln -sfn "$(readlink -f "${assets}")" "${CBIN}"
"${REPO}/hack/cluster/images.sh" build
t_build=$((SECONDS - t0))

# --- record the host before touching it ------------------------------------
# down.sh undoes exactly what is recorded here, so this comes first and is
# never overwritten while a cluster exists (STATE did not exist above).
mkdir -p "${HOST_DIR}" "${PIDS}" "${LOGS}" "${PKI}"
rm -f "${LOGS}"/*.log
for s in "${SYSCTLS[@]}"; do
	v="$(sysctl -n "${s}" 2>/dev/null)" && printf '%s=%s\n' "${s}" "${v//$'\t'/ }" >>"${HOST_DIR}/sysctls"
done
iptables-save >"${HOST_DIR}/iptables"
ip6tables-save >"${HOST_DIR}/ip6tables"
if command -v nft >/dev/null; then
	nft_chains >"${HOST_DIR}/nft-chains"
	nft list tables >"${HOST_DIR}/nft-tables" 2>/dev/null
fi
for p in "${FIXED_PATHS[@]}"; do
	[[ -e ${p} ]] || echo "${p}" >>"${HOST_DIR}/created-paths"
done
touch "${HOST_DIR}/created-paths"
# The kubelet makes a kubepods cgroup in every v1 hierarchy.
for d in /sys/fs/cgroup/*/; do
	[[ -d ${d}kubepods ]] || echo "${d}kubepods" >>"${HOST_DIR}/created-cgroups"
done
touch "${HOST_DIR}/created-cgroups"

# --- network ---------------------------------------------------------------
log "network: node ${NODE_IP} on ${NODE_BRIDGE}, pods ${POD_CIDR} on ${POD_BRIDGE}, services ${SERVICE_CIDR}"
ip link add "${NODE_BRIDGE}" type bridge
ip addr add "${NODE_IP}/${NODE_CIDR#*/}" dev "${NODE_BRIDGE}"
ip link set "${NODE_BRIDGE}" up
# A ClusterIP that kube-proxy has not (yet) translated goes to the portless
# node bridge, i.e. nowhere, instead of out of the default route.
ip route add "${SERVICE_CIDR}" dev "${NODE_BRIDGE}"
# Made here rather than by the CNI plugin so that the host routes to pods
# from the start and down.sh knows it is ours.
ip link add "${POD_BRIDGE}" type bridge
ip addr add "${POD_GATEWAY}/${POD_CIDR#*/}" dev "${POD_BRIDGE}"
ip link set "${POD_BRIDGE}" up
sysctl -qw net.ipv4.ip_forward=1
# Pods may reach pods and the node, nothing else. In mangle FORWARD, ahead
# of every filter rule kube-proxy adds (KUBE-FORWARD accepts marked
# traffic), so a Service pointed at an outside address cannot leak either.
iptables -t mangle -N HERALD-EGRESS
iptables -t mangle -A HERALD-EGRESS -d "${POD_CIDR}" -j RETURN
iptables -t mangle -A HERALD-EGRESS -d "${NODE_CIDR}" -j RETURN
iptables -t mangle -A HERALD-EGRESS -j DROP
iptables -t mangle -I FORWARD 1 -i "${POD_BRIDGE}" -j HERALD-EGRESS

# --- PKI: CA, serving and client certificates, ServiceAccount keys, tokens -
log "pki"
(
	cd "${PKI}"
	exec 2>>"${LOGS}/pki.log"
	# ECDSA for the TLS keys (instant to generate); the ServiceAccount
	# signing key is RSA, as the apiserver's default RS256 expects.
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=herald-e2e-ca"
	# issue NAME SUBJECT EXTENSIONS
	issue() {
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -subj "$2" |
			openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out "$1.crt" \
				-extfile <(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "$3")
	}
	issue apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:${NODE_IP},IP:${API_SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.${CLUSTER_DOMAIN}"
	issue kubelet "/CN=system:node:${NODE_NAME}/O=system:nodes" "extendedKeyUsage=serverAuth
subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}"
	# The apiserver's identity towards the kubelet (logs, exec, port-forward).
	issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "extendedKeyUsage=clientAuth"
	# The aggregation layer's front proxy: its own CA, which aggregated
	# API servers (herald apiserver) trust for the user headers.
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 30 -subj "/CN=herald-e2e-front-proxy-ca"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout front-proxy-client.key -subj "/CN=front-proxy-client" |
		openssl x509 -req -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -days 30 -out front-proxy-client.crt \
			-extfile <(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")
	openssl genrsa -out sa.key 2048
	openssl rsa -in sa.key -pubout -out sa.pub
	chmod 600 ./*.key
)
# Components and the admin authenticate with static tokens: no client
# certificate per component to manage.
declare -A token
for u in admin kubelet controller-manager scheduler proxy; do token[${u}]="$(openssl rand -hex 24)"; done
cat >"${PKI}/tokens.csv" <<EOF
${token[admin]},herald-e2e-admin,herald-e2e-admin,"system:masters"
${token[kubelet]},system:node:${NODE_NAME},kubelet,"system:nodes"
${token[controller-manager]},system:kube-controller-manager,kube-controller-manager
${token[scheduler]},system:kube-scheduler,kube-scheduler
${token[proxy]},system:kube-proxy,kube-proxy
EOF
chmod 600 "${PKI}/tokens.csv"

# kubeconfig FILE USER TOKEN: CA embedded, so a copy works anywhere here.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ${NODE_NAME}
  cluster:
    server: ${API_URL}
    certificate-authority-data: $(base64 -w0 "${PKI}/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: ${NODE_NAME}
  context:
    cluster: ${NODE_NAME}
    user: $2
current-context: ${NODE_NAME}
EOF
	chmod 600 "$1"
}
kubeconfig "${STATE}/kubelet.kubeconfig" kubelet "${token[kubelet]}"
kubeconfig "${STATE}/controller-manager.kubeconfig" controller-manager "${token[controller-manager]}"
kubeconfig "${STATE}/scheduler.kubeconfig" scheduler "${token[scheduler]}"
kubeconfig "${STATE}/proxy.kubeconfig" proxy "${token[proxy]}"
kubeconfig "${KUBECONFIG_ADMIN}" admin "${token[admin]}"

# --- configuration files ---------------------------------------------------
mkdir -p "${STATE}/cni/net.d" "${STATE}/containerd" "${KUBELET_DIR}" "${STATE}/pod-logs"
cat >"${STATE}/cni/net.d/10-${CNI_NETWORK}.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${CNI_NETWORK}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${POD_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GATEWAY}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${STATE}/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# containerd: its own root, state, socket and runc root; the host's
# containerd (if any) is neither used nor disturbed.
cat >"${STATE}/containerd/config.toml" <<EOF
version = 2
root = "${STATE}/containerd/root"
state = "${CONTAINERD_STATE}"
oom_score = 0
# Plugins that would create directories of their own outside the cluster dir
# or that nothing here uses.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${STATE}/containerd/opt"

# Unused (CRI runs io.containerd.runc.v2), but the task service needs it
# loaded; its runc root would default to /run/containerd/runc.
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "${STATE}/runc-v1"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # This VM cannot set a negative oom_score_adj: without this, every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Network namespaces under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${STATE}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${STATE}/cni/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF

cat >"${STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: ${PKI}/kubelet.crt
tlsPrivateKeyFile: ${PKI}/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ${PKI}/ca.crt
authorization:
  mode: Webhook
clusterDomain: ${CLUSTER_DOMAIN}
clusterDNS: [${DNS_IP}]
# Pods see the cluster DNS only, never the host's resolver.
resolvConf: ""
podLogsDir: ${STATE}/pod-logs
# The VM cannot lower oom_score_adj below 0.
oomScoreAdj: 0
# Images are imported, never pulled back: never collect them; and do not
# evict on a disk that is simply fuller than a default threshold.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
evictionPressureTransitionPeriod: 30s
failSwapOn: false
serializeImagePulls: false
maxPods: 110
# Faster status for specs that wait on pods.
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
EOF

cat >"${STATE}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ${STATE}/proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${POD_CIDR}
detectLocalMode: ClusterCIDR
nodePortAddresses: [${NODE_CIDR}]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
iptables:
  # Not for NodePorts on 127.0.0.1: that would need route_localnet.
  localhostNodePorts: false
  minSyncPeriod: 0s
# 0 leaves the host's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF

cat >"${STATE}/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ${STATE}/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF

# --- processes ----------------------------------------------------------
# start NAME ARGS...: a session of its own (it outlives make and the shell),
# output to logs/NAME.log, pid to state/pids/NAME.pid.
start() {
	local name=$1
	shift
	# 8>&-: the daemons must not inherit (and so hold forever) the lock.
	setsid "$@" </dev/null >"${LOGS}/${name}.log" 2>&1 8>&- &
	local pid=$! i
	echo "${pid}" >"${PIDS}/${name}.pid"
	# Until the fork has exec'd the program, pid_of (which checks the
	# binary) would call it dead; on a busy machine that takes a moment.
	for ((i = 0; i < 100; i++)); do
		pid_of "${name}" >/dev/null && return 0
		[[ -d /proc/${pid} ]] || return 0 # died: the caller's check shows its log
		sleep 0.05
	done
}
# fail NAME: say which component failed and show the end of its log.
fail() {
	log "$1 did not come up; the end of ${LOGS}/$1.log:"
	tail -n 25 "${LOGS}/$1.log" >&2 || true
	die "cluster-up failed; run make cluster-down to clean up"
}

log "containerd"
# Every image is imported; a pull means a spec names an image that is not.
# Sending pulls to a closed local port makes them fail at once, with no DNS
# lookup and no connection off the machine.
start containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
	containerd --config "${STATE}/containerd/config.toml"
wait_for 30 containerd ctr --address "${CONTAINERD_SOCK}" version || fail containerd
# Imported while etcd and the apiserver start; waited for before the
# kubelet, which must never find an image missing (it would try a pull).
"${REPO}/hack/cluster/images.sh" import &
import_pid=$!

log "etcd"
etcd_url="http://127.0.0.1:${ETCD_CLIENT_PORT}"
start etcd etcd --name "${NODE_NAME}" --data-dir "${STATE}/etcd" \
	--listen-client-urls "${etcd_url}" --advertise-client-urls "${etcd_url}" \
	--listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
	--initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
	--initial-cluster "${NODE_NAME}=http://127.0.0.1:${ETCD_PEER_PORT}" \
	--unsafe-no-fsync --log-level warn
wait_for 30 etcd curl -fs "${etcd_url}/health" || fail etcd

log "kube-apiserver"
start kube-apiserver kube-apiserver \
	--etcd-servers="${etcd_url}" \
	--bind-address="${NODE_IP}" --advertise-address="${NODE_IP}" --secure-port="${API_PORT}" \
	--service-cluster-ip-range="${SERVICE_CIDR}" \
	--tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
	--client-ca-file="${PKI}/ca.crt" --token-auth-file="${PKI}/tokens.csv" \
	--service-account-issuer="https://kubernetes.default.svc.${CLUSTER_DOMAIN}" \
	--service-account-key-file="${PKI}/sa.pub" --service-account-signing-key-file="${PKI}/sa.key" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
	--kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="${PKI}/ca.crt" \
	--kubelet-preferred-address-types=InternalIP \
	--requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- --requestheader-uid-headers=X-Remote-Uid \
	--proxy-client-cert-file="${PKI}/front-proxy-client.crt" --proxy-client-key-file="${PKI}/front-proxy-client.key" \
	--enable-aggregator-routing=true \
	--allow-privileged=true --cert-dir="${PKI}/apiserver-generated" --profiling=false
wait_for 60 kube-apiserver kubectl_admin get --raw /readyz || fail kube-apiserver

wait "${import_pid}" || fail containerd

log "kube-controller-manager, kube-scheduler"
start kube-controller-manager kube-controller-manager \
	--kubeconfig="${STATE}/controller-manager.kubeconfig" \
	--service-account-private-key-file="${PKI}/sa.key" --root-ca-file="${PKI}/ca.crt" \
	--use-service-account-credentials=true --controllers='*' \
	--cluster-signing-cert-file="${PKI}/ca.crt" --cluster-signing-key-file="${PKI}/ca.key" \
	--leader-elect=false --bind-address=127.0.0.1 --cluster-name="${NODE_NAME}" --profiling=false
start kube-scheduler kube-scheduler --config="${STATE}/kube-scheduler.yaml" --bind-address=127.0.0.1 --profiling=false

log "kubelet, kube-proxy"
start kubelet kubelet --config="${STATE}/kubelet.yaml" --kubeconfig="${STATE}/kubelet.kubeconfig" \
	--root-dir="${KUBELET_DIR}" --hostname-override="${NODE_NAME}" --node-ip="${NODE_IP}"
start kube-proxy kube-proxy --config="${STATE}/kube-proxy.yaml"

# Stops waiting as soon as a component has died: its log says why.
dead=""
node_ready() {
	local c
	for c in "${COMPONENTS[@]}"; do pid_of "${c}" >/dev/null || { dead=${c}; return 0; }; done
	[[ "$(kubectl_admin get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for 90 "node ${NODE_NAME} Ready" node_ready || fail kubelet
[[ -z ${dead} ]] || fail "${dead}"
t_ready=$((SECONDS - t0))
wait_for 60 "the default ServiceAccount" kubectl_admin -n default get serviceaccount default || fail kube-controller-manager
for c in "${COMPONENTS[@]}"; do pid_of "${c}" >/dev/null || fail "${c}"; done

log "CoreDNS at ${DNS_IP}"
sed -e "s/@DNS_IP@/${DNS_IP}/g" -e "s/@CLUSTER_DOMAIN@/${CLUSTER_DOMAIN}/g" -e "s#@COREDNS_IMAGE@#${COREDNS_IMAGE}#g" \
	"${REPO}/hack/cluster/manifests/coredns.yaml" | kubectl_admin apply -f - >/dev/null
kubectl_admin -n kube-system rollout status deployment/coredns --timeout=90s >/dev/null || fail kubelet

log "cluster up in $((SECONDS - t0))s (binaries and images ${t_build}s, node Ready at ${t_ready}s)"
log "export KUBECONFIG=${KUBECONFIG_ADMIN}"
