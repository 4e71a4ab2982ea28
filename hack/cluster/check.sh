#!/usr/bin/env bash
# Checks a running e2e cluster the way the e2e suite will use it: a
# herald:e2e receiver behind a ClusterIP Service, reached from other pods by
# DNS name and by ClusterIP; the cluster DNS; the API server from a pod
# with its ServiceAccount token and CA; kubectl port-forward from the host.
# Everything runs in the namespace herald-check, removed at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns=herald-check
k() { kubectl_admin -n "${ns}" "$@"; }
t0=${SECONDS}
failed=0
pass() { log "PASS $*"; }
failc() { log "FAIL $*"; failed=$((failed + 1)); }

kubectl_admin get --raw /readyz >/dev/null 2>&1 || die "the cluster is not up: make cluster-up"
kubectl_admin delete namespace "${ns}" --ignore-not-found --wait=true >/dev/null
kubectl_admin create namespace "${ns}" >/dev/null
# Pods start only once the namespace's default ServiceAccount exists.
wait_for 30 "ServiceAccount ${ns}/default" k get serviceaccount default

k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: receiver
  labels: {app: receiver}
spec:
  containers:
  - name: receiver
    image: ${HERALD_IMAGE}
    imagePullPolicy: Never
    args: [receiver, --listen=:8080]
    ports: [{containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /_herald/healthz, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: receiver
spec:
  selector: {app: receiver}
  ports: [{port: 80, targetPort: 8080}]
EOF
if k wait --for=condition=Ready pod/receiver --timeout=60s >/dev/null; then
	pass "herald:e2e receiver pod Ready ($((SECONDS - t0))s)"
else
	failc "receiver pod not Ready"
	k describe pod receiver | tail -20 >&2
fi
cluster_ip="$(k get service receiver -o jsonpath='{.spec.clusterIP}')"

# probe NAME ARGS...: a netcheck pod; passes when it exits 0.
probes=()
probe() {
	local name=$1
	shift
	k run "${name}" --image="${NETCHECK_IMAGE}" --image-pull-policy=Never --restart=Never -- "$@" >/dev/null
	probes+=("${name}")
}
probe svc-dns get "http://receiver.${ns}.svc.${CLUSTER_DOMAIN}/_herald/healthz"
probe svc-ip get "http://${cluster_ip}/_herald/healthz"
probe dns resolve "kubernetes.default.svc.${CLUSTER_DOMAIN}"
probe api api /version

for p in "${probes[@]}"; do
	if k wait --for=jsonpath='{.status.phase}'=Succeeded "pod/${p}" --timeout=60s >/dev/null 2>&1; then
		pass "${p}: $(k logs "${p}" | head -1)"
	else
		failc "${p}: phase $(k get pod "${p}" -o jsonpath='{.status.phase}')"
		k logs "${p}" 2>&1 | tail -5 >&2 || true
	fi
done

# kubectl port-forward from the host to the receiver pod.
port=18080
kubectl_admin -n "${ns}" port-forward pod/receiver "${port}:8080" >"${LOGS}/check-port-forward.log" 2>&1 &
pf=$!
if wait_for 20 "port-forward" curl -fs "http://127.0.0.1:${port}/_herald/healthz"; then
	pass "port-forward: $(curl -fs "http://127.0.0.1:${port}/_herald/healthz" | head -c 200)"
else
	failc "port-forward: $(tail -3 "${LOGS}/check-port-forward.log")"
fi
kill "${pf}" 2>/dev/null
wait "${pf}" 2>/dev/null || true

kubectl_admin delete namespace "${ns}" --wait=false >/dev/null
if ((failed > 0)); then
	log "${failed} check(s) failed in $((SECONDS - t0))s"
	exit 1
fi
log "all checks passed in $((SECONDS - t0))s"
