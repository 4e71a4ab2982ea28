#!/usr/bin/env bash
# Installs, from Debian's repositories, the container runtime and network
# tools the e2e cluster runs on, when any is missing (up.sh runs it first). A fresh machine lacks
# them; a machine that has them is left alone, so this is cheap to repeat.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables iproute2 openssl util-linux procps curl conntrack)
tools=(containerd containerd-shim-runc-v2 ctr runc iptables iptables-save ip6tables-save ip openssl findmnt sysctl flock curl conntrack)

missing=0
for t in "${tools[@]}"; do
	command -v "${t}" >/dev/null || missing=1
done
for p in bridge host-local portmap loopback; do
	[[ -x /usr/lib/cni/${p} ]] || missing=1
done
[[ ${missing} -eq 1 ]] || exit 0

[[ ${EUID} -eq 0 ]] || { echo "installing ${packages[*]} needs root" >&2; exit 1; }
echo "installing ${packages[*]} from Debian (once)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The package starts a system containerd; the cluster runs its own and
# needs nothing from this one.
if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
	systemctl stop containerd || true
fi
