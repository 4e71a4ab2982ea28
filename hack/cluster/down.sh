#!/usr/bin/env bash
# Stops the e2e cluster and puts the host back as up.sh found it: the
# processes it started (by recorded pid), the pods and their shims, the
# mounts under bin/cluster, the kubepods cgroups, the bridges, the iptables
# rules and chains that were not there before, the sysctls it or the
# kubelet/kube-proxy/CNI changed, and the fixed paths that did not exist.
# Safe to run twice, and after a failed or interrupted up.
set -uo pipefail # not -e: every step runs, whatever failed before it
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ ${EUID} -eq 0 ]] || die "the cluster needs root"
lock
t0=${SECONDS}
problems=0
warn() { log "warning: $*"; problems=$((problems + 1)); }

# alive PID...: those of the pids that still run. A zombie counts as gone:
# our components' parent is init, which may reap them only seconds later.
alive() {
	local p st
	for p in "$@"; do
		st="$(cut -d' ' -f3 "/proc/${p}/stat" 2>/dev/null)" || continue
		[[ ${st} == Z ]] || echo "${p}"
	done
}

# stop_pids GRACE PID...: SIGTERM, up to GRACE seconds, then SIGKILL.
stop_pids() {
	local grace=$1 deadline
	local -a left
	shift
	[[ $# -gt 0 ]] || return 0
	kill -TERM "$@" 2>/dev/null
	deadline=$((SECONDS + grace))
	while [[ -n "$(alive "$@")" ]] && ((SECONDS < deadline)); do sleep 0.1; done
	mapfile -t left < <(alive "$@")
	[[ ${#left[@]} -gt 0 ]] || return 0
	kill -KILL "${left[@]}" 2>/dev/null
	deadline=$((SECONDS + 5))
	while [[ -n "$(alive "${left[@]}")" ]] && ((SECONDS < deadline)); do sleep 0.1; done
}

killed=() # every pid this script ended, to wait for at the end

# --- 1. the components, newest first (the kubelet before containerd, so it
# restarts nothing) ----------------------------------------------------------
if [[ -d ${PIDS} ]]; then
	pids=()
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
		p="$(pid_of "${COMPONENTS[i]}")" && pids+=("${p}")
	done
	# Their state is thrown away: a short grace is enough (the apiserver
	# would otherwise drain for up to a minute).
	stop_pids 2 "${pids[@]+"${pids[@]}"}"
	killed+=("${pids[@]+"${pids[@]}"}")
fi

# --- 2. pods and shims ---------------------------------------------------
# Pod processes are everything in the kubepods cgroups, when those are
# ours; the shims are the ones that serve our containerd's socket. Their
# state is thrown away, so SIGKILL is enough.
pod_pids() {
	local c
	[[ -f ${HOST_DIR}/created-cgroups ]] || return 0
	while read -r c; do
		[[ -d ${c} ]] && find "${c}" -name cgroup.procs -exec cat {} + 2>/dev/null
	done <"${HOST_DIR}/created-cgroups" | sort -u
}
# Shims are the processes started with our containerd's socket on their
# command line, which is ours alone (containerd 1.6 keeps no pid file for
# them).
shim_pids() {
	local f
	# "[.]sock" so that the pattern does not match grep's own command line.
	grep -lsa -- "${CONTAINERD_SOCK%.sock}[.]sock" /proc/[0-9]*/cmdline | while read -r f; do
		f="${f#/proc/}"
		echo "${f%/cmdline}"
	done
}
# Their sockets are in /run/containerd/s whatever containerd's state dir
# is; each task's bundle names its shim's.
shim_sockets=()
for f in "${CONTAINERD_STATE}"/io.containerd.runtime.v2.task/*/*/address; do
	[[ -f ${f} ]] && a="$(<"${f}")" && [[ ${a} == unix:///run/containerd/s/* ]] && shim_sockets+=("${a#unix://}")
done
for _ in $(seq 50); do
	mapfile -t victims < <(pod_pids; shim_pids)
	[[ ${#victims[@]} -gt 0 ]] || break
	kill -KILL "${victims[@]}" 2>/dev/null
	killed+=("${victims[@]}")
	sleep 0.1
done
[[ -z "$(pod_pids)$(shim_pids)" ]] || warn "pod or shim processes remain: $(pod_pids) $(shim_pids)"

rm -f "${shim_sockets[@]+"${shim_sockets[@]}"}"

# --- 3. mounts under the cluster dir (rootfs, shm, netns, kubelet volumes
# and the kubelet's own bind mount), innermost first ------------------------
for _ in 1 2 3 4 5; do
	mapfile -t mounts < <(findmnt -rn -o TARGET | grep -F "${CLUSTER_DIR}/" | sort -ru)
	[[ ${#mounts[@]} -gt 0 ]] || break
	for m in "${mounts[@]}"; do
		umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null
	done
done
! findmnt -rn -o TARGET | grep -qF "${CLUSTER_DIR}/" || warn "mounts remain under ${CLUSTER_DIR}"

# --- 4. cgroups the kubelet made -----------------------------------------
if [[ -f ${HOST_DIR}/created-cgroups ]]; then
	while read -r c; do
		[[ -d ${c} ]] || continue
		find "${c}" -depth -type d -exec rmdir {} + 2>/dev/null
		[[ ! -d ${c} ]] || warn "cgroup ${c} remains"
	done <"${HOST_DIR}/created-cgroups"
fi

# --- 5. network ----------------------------------------------------------
# undo_iptables FAMILY BEFORE: remove what FAMILY-save shows now that
# BEFORE (its output at up) did not have: new rules in old chains (by
# their exact spec), then the new chains. One FAMILY-restore --noflush
# transaction: kube-proxy's dozens of chains one command each would take
# seconds.
undo_iptables() {
	local cmd=$1 before=$2 now table script="" now_t before_t new_chains chain
	now="$("${cmd}-save" 2>/dev/null)" || return 0
	section() { awk -v t="*$1" '$0 == t {f = 1; next} /^COMMIT/ {f = 0} f'; }
	for table in $(grep '^\*' <<<"${now}" | tr -d '*'); do
		now_t="$(section "${table}" <<<"${now}")"
		before_t="$(section "${table}" <"${before}")"
		new_chains="$(comm -23 <(grep '^:' <<<"${now_t}" | cut -d' ' -f1 | cut -c2- | sort) \
			<(grep '^:' <<<"${before_t}" | cut -d' ' -f1 | cut -c2- | sort))"
		script+="*${table}"$'\n'
		# New rules in chains that were there before, last first; rules in
		# new chains go with their chain.
		script+="$(grep '^-A ' <<<"${now_t}" | grep -vxFf <(grep '^-A ' <<<"${before_t}") |
			awk 'NR == FNR {if ($0 != "") nc[$0] = 1; next} !($2 in nc)' <(printf '%s\n' "${new_chains}") - |
			tac | sed 's/^-A /-D /')"$'\n'
		for chain in ${new_chains}; do script+="-F ${chain}"$'\n'; done
		for chain in ${new_chains}; do script+="-X ${chain}"$'\n'; done
		script+="COMMIT"$'\n'
	done
	"${cmd}-restore" -w --noflush <<<"${script}" || warn "${cmd}-restore could not undo all rules; what it was given: $(tr '\n' ';' <<<"${script}")"
}
if [[ -f ${HOST_DIR}/iptables ]]; then
	undo_iptables iptables "${HOST_DIR}/iptables"
	undo_iptables ip6tables "${HOST_DIR}/ip6tables"
else
	# No record (up failed before making one): remove our own chain anyway.
	iptables -w -t mangle -D FORWARD -i "${POD_BRIDGE}" -j HERALD-EGRESS 2>/dev/null
	iptables -w -t mangle -F HERALD-EGRESS 2>/dev/null && iptables -w -t mangle -X HERALD-EGRESS 2>/dev/null
fi

# iptables-nft also made the nf_tables tables and built-in chains it needed
# (mangle for HERALD-EGRESS, nat and filter for kube-proxy): once empty,
# those that were not there before go too.
if command -v nft >/dev/null && [[ -f ${HOST_DIR}/nft-chains ]]; then
	nft_chains | grep -vxFf "${HOST_DIR}/nft-chains" | while read -r fam tbl chain; do
		iptables_table "${fam}" "${tbl}" && nft delete chain "${fam}" "${tbl}" "${chain}" 2>/dev/null
	done
	nft list tables 2>/dev/null | grep -vxFf "${HOST_DIR}/nft-tables" | while read -r _ fam tbl; do
		iptables_table "${fam}" "${tbl}" || continue
		# Never a table with chains left in it.
		nft list table "${fam}" "${tbl}" | grep -q '^[[:space:]]*chain ' || nft delete table "${fam}" "${tbl}"
	done
fi

for br in "${POD_BRIDGE}" "${NODE_BRIDGE}"; do
	[[ -e /sys/class/net/${br} ]] || continue
	# The host ends of pod veths vanish with the pods' network namespaces;
	# any still attached are ours too.
	for port in /sys/class/net/"${br}"/brif/*; do
		[[ -e ${port} ]] && ip link del "${port##*/}" 2>/dev/null
	done
	ip link del "${br}" || warn "bridge ${br} remains"
done
# Connections tracked for the cluster's addresses would outlive it.
for net in "${POD_CIDR}" "${SERVICE_CIDR}" "${NODE_CIDR}"; do
	conntrack -D -s "${net}" >/dev/null 2>&1
	conntrack -D -d "${net}" >/dev/null 2>&1
done

# --- 6. sysctls, back to what they were ----------------------------------
if [[ -f ${HOST_DIR}/sysctls ]]; then
	while IFS='=' read -r key value; do
		[[ "$(sysctl -n "${key}" 2>/dev/null)" == "${value}" ]] && continue
		sysctl -qw "${key}=${value}" || warn "could not restore ${key}=${value}"
	done <"${HOST_DIR}/sysctls"
fi

# --- 7. fixed paths that did not exist before up ---------------------------
if [[ -f ${HOST_DIR}/created-paths ]]; then
	while read -r p; do
		[[ -e ${p} ]] || continue
		if [[ ${p} == /run/containerd ]]; then
			# Shared with a host containerd started since: keep it unless only
			# our (now removed) shim sockets were there.
			rmdir "${p}/s" 2>/dev/null
			rmdir "${p}" 2>/dev/null || warn "${p} is not empty: left alone"
		else
			rm -rf "${p}"
		fi
	done <"${HOST_DIR}/created-paths"
fi
# Where /var/lib/cni was there before, only our sandboxes' results go.
for r in /var/lib/cni/results/"${CNI_NETWORK}"-*-eth0; do
	[[ -e ${r} ]] || continue
	id="${r#/var/lib/cni/results/"${CNI_NETWORK}"-}"
	rm -f "${r}" "/var/lib/cni/results/cni-loopback-${id%-eth0}-lo"
done

# --- 8. the cluster's state ----------------------------------------------
rm -rf "${STATE}" "${KUBECONFIG_ADMIN}" || warn "could not remove ${STATE}"

# Whatever this script killed is dead already, but init reaps orphans at
# its own pace: wait (briefly) until they are gone from the process table
# too, so that nothing of the cluster shows in ps afterwards.
deadline=$((SECONDS + 5))
for p in "${killed[@]+"${killed[@]}"}"; do
	while [[ -e /proc/${p} ]] && ((SECONDS < deadline)); do sleep 0.1; done
done

if ((problems > 0)); then
	log "cluster down in $((SECONDS - t0))s with ${problems} warning(s)"
	exit 1
fi
log "cluster down in $((SECONDS - t0))s; host restored"
