# Herald. `make dev` runs it locally; `make test` passes the tests.
# Everything the targets need is built here from the Go module proxy and
# cached outside the clone (~/.cache/herald), so a fresh clone needs nothing
# else installed.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
K8S_VERSION ?= 1.37.2
ETCD_VERSION ?= 3.6.16
BIN ?= $(CURDIR)/bin
CONTROLLER_GEN := go tool -modfile=$(CURDIR)/hack/tools/go.mod controller-gen
OPENAPI_GEN := go tool -modfile=$(CURDIR)/hack/tools/go.mod openapi-gen
GOLANGCI_LINT := go tool -modfile=$(CURDIR)/hack/tools/lint/go.mod golangci-lint
NATS_SERVER := $(BIN)/nats-server
HERALD := $(BIN)/herald
PLUGIN_DIR ?= $(BIN)
HERALD_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/herald
# promtool, for the alert rules' tests, at the Prometheus release whose Go
# module the proxy serves (v0.316.0 is Prometheus 3.16).
PROMETHEUS_VERSION ?= v0.316.0
PROMTOOL := $(HERALD_CACHE)/promtool-$(PROMETHEUS_VERSION)/promtool
GINKGO_FLAGS ?=

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate the CRDs and RBAC from the API types and markers.
	$(CONTROLLER_GEN) crd:generateEmbeddedObjectMeta=false paths="./api/v1alpha1/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager-role webhook paths="./internal/controller/...;./internal/natsauth/..."

.PHONY: generate
generate: ## Generate deepcopy code and the delivery API's OpenAPI definitions.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."
	$(OPENAPI_GEN) --output-dir internal/apiserver/openapi --output-pkg github.com/herald-dev/herald/internal/apiserver/openapi \
		--output-file zz_generated.openapi.go --output-model-name-file zz_generated.model_name.go \
		--go-header-file hack/boilerplate.go.txt --report-filename /dev/null \
		$(foreach p,apis/meta/v1 runtime version api/resource types util/intstr,--readonly-pkg k8s.io/apimachinery/pkg/$(p)) \
		k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version ./api/delivery/v1alpha1

.PHONY: verify-generated
verify-generated: manifests generate ## Fail when generated files are stale.
	@if ! git diff --quiet --exit-code -- api config internal/apiserver/openapi; then \
		git --no-pager diff --stat -- api config internal/apiserver/openapi; \
		echo "generated files are stale: run 'make manifests generate' and commit the result" >&2; exit 1; \
	fi

# Every Go module of the repository: Herald's and the pinned ones under
# hack/ (tools, images, the Kubernetes components built from source).
GO_MODULES = $(dir $(shell git ls-files -- go.mod '*/go.mod' 2>/dev/null || find . -name go.mod -not -path './bin/*'))

.PHONY: tidy
tidy: ## go mod tidy every Go module of the repository.
	@for m in $(GO_MODULES); do echo "go mod tidy in $$m"; (cd $$m && go mod tidy); done

.PHONY: verify-tidy
verify-tidy: ## Fail when a go.mod or go.sum is not what go mod tidy makes of it.
	@failed=0; for m in $(GO_MODULES); do \
		if ! (cd $$m && go mod tidy -diff); then \
			echo "$${m}go.mod or go.sum is not tidy: run 'make tidy' and commit the result" >&2; failed=1; \
		fi; \
	done; exit $$failed

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet (the e2e suite too).
	go vet -tags e2e ./...

.PHONY: lint
lint: ## golangci-lint with the repository's .golangci.yml (pinned in hack/tools/lint).
	$(GOLANGCI_LINT) run ./...

.PHONY: envtest
envtest: ## Build (once) and link kube-apiserver and etcd into bin/k8s/.
	@K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/control-plane.sh $(BIN) >/dev/null

.PHONY: test
test: verify-generated verify-tidy vet lint envtest ## Run the unit and integration tests (real API server, real NATS, promtool for the alerts, Chromium for the console).
	@# Together: Chromium's download from Debian overlaps promtool's build on a cold machine.
	@$(MAKE) --no-print-directory -j2 promtool chromium
	CHROMIUM=$$(command -v chromium) PROMTOOL=$(PROMTOOL) KUBEBUILDER_ASSETS=$(BIN)/k8s/$(K8S_VERSION) go test -race ./... -count=1 -timeout 30m $(GINKGO_FLAGS) 2>&1 | tee $(BIN)/test.log | grep -Ev '^\s*$$' ; \
	status=$${PIPESTATUS[0]}; \
	echo; echo "go test summary:"; grep -E '^(ok|FAIL|---|\?)' $(BIN)/test.log | grep -v 'no test files' || true; \
	exit $$status

.PHONY: chromium
chromium: ## Install Debian's Chromium (once), the headless browser the console's tests drive.
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

.PHONY: promtool
promtool: $(PROMTOOL) ## Build (once, cached) promtool, which the alert rules' tests run.

$(PROMTOOL):
	GOBIN=$(dir $(PROMTOOL)) CGO_ENABLED=0 go install -trimpath github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)

.PHONY: bench
bench: ## Run the delivery benchmarks (deliveries/s against a JetStream forwarder and raw HTTP, latency, isolation, recovery) and the publish benchmark.
	go test ./internal/dispatcher/ -run '^$$' -bench 'Delivery|Latency|Isolation|Recovery' -benchtime 1x -count 1 -timeout 30m
	go test ./pkg/events/ -run '^$$' -bench Publish -benchtime 1x -count 1 -timeout 10m

.PHONY: bench-scale
bench-scale: ## Measure one dispatcher with 1,000 endpoints: start-up, idle CPU, NATS traffic and heap.
	go test ./internal/dispatcher/ -run '^$$' -bench IdleEndpoints -benchtime 1x -count 1 -timeout 30m

.PHONY: bench-operator
bench-operator: build nats-server envtest ## Measure the operator on make dev with 10,000 endpoints in 1,000 namespaces: time to Ready, memory, idle CPU, status writes.
	go build -o $(BIN)/herald-dev ./hack/dev
	KUBEBUILDER_ASSETS=$(BIN)/k8s/$(K8S_VERSION) go run ./hack/bench-operator --bin $(BIN) --namespaces $${NAMESPACES:-1000} --per-namespace $${PER_NAMESPACE:-10}

.PHONY: bench-delivery-api
bench-delivery-api: build envtest ## Measure the delivery API behind a real kube-apiserver over 10,000 to 100,000 log entries.
	KUBEBUILDER_ASSETS=$(BIN)/k8s/$(K8S_VERSION) go run ./hack/bench-deliveryapi --herald $(BIN)/herald --attempts 10000,30000,100000

##@ E2E cluster

# The cluster's unix sockets live under CLUSTER_DIR, and socket paths are
# short (108 bytes): a deep clone gets a short directory under /tmp instead.
CLUSTER_DIR ?= $(shell d="$(BIN)/cluster"; if [ $${#d} -le 60 ]; then echo "$$d"; else echo "/tmp/herald-cluster-$$(printf %s "$$d" | md5sum | cut -c1-8)"; fi)
CLUSTER_ENV = BIN=$(BIN) CLUSTER_DIR=$(CLUSTER_DIR) K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION)

.PHONY: cluster-build
cluster-build: ## Build (once, cached) the cluster's Kubernetes components, CoreDNS and images.
	K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/control-plane.sh $(BIN) kube-apiserver etcd kube-controller-manager kube-scheduler kubelet kube-proxy kubectl >/dev/null
	$(MAKE) --no-print-directory build nats-server
	$(CLUSTER_ENV) hack/cluster/images.sh build

.PHONY: cluster-host
cluster-host: ## Install containerd, runc, CNI plugins and iptables from Debian when missing.
	hack/cluster/host-packages.sh

.PHONY: cluster-up
cluster-up: build nats-server ## Start the single-node e2e cluster (kubeconfig: bin/cluster/kubeconfig).
	$(CLUSTER_ENV) hack/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the e2e cluster and restore the host.
	$(CLUSTER_ENV) hack/cluster/down.sh

.PHONY: cluster-images
cluster-images: build nats-server ## Rebuild bin/herald and the images, and import them into the running cluster.
	$(CLUSTER_ENV) hack/cluster/images.sh all

.PHONY: test-e2e
test-e2e: ## Run the e2e suite (test/e2e) in the cluster of `make cluster-up`, or KUBECONFIG's with E2E_KUBECONFIG=.
	kubectl="$(CLUSTER_DIR)/bin/kubectl"; [[ -x $$kubectl ]] || kubectl=kubectl; \
	E2E_KUBECONFIG=$${E2E_KUBECONFIG:-$(CLUSTER_DIR)/kubeconfig} KUBECTL=$${KUBECTL:-$$kubectl} \
		go test -tags e2e ./test/e2e/ -count=1 -timeout 60m -v -ginkgo.v $(E2E_FLAGS) 2>&1 | tee $(BIN)/e2e.log

.PHONY: cluster-check
cluster-check: ## Check the running cluster: Service, DNS, port-forward and API access from pods.
	$(CLUSTER_ENV) hack/cluster/check.sh

##@ Build

.PHONY: build
build: $(HERALD) ## Build the herald binary (manager, dispatcher and CLI).

.PHONY: $(HERALD)
$(HERALD):
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/herald-dev/herald/internal/dispatcher.Version=$(VERSION)" -o $(HERALD) ./cmd/herald

.PHONY: kubectl-plugin
kubectl-plugin: build ## Install `kubectl herald` into PLUGIN_DIR (default bin/; put it on PATH): the herald binary named kubectl-herald.
	mkdir -p $(PLUGIN_DIR)
	cp $(HERALD) $(PLUGIN_DIR)/kubectl-herald

# The archives .krew.yaml points krew at, one per platform, for a release.
KREW_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
.PHONY: krew-archives
krew-archives: ## Write dist/kubectl-herald_VERSION_OS_ARCH.tar.gz for each platform .krew.yaml lists.
	mkdir -p dist/krew
	for p in $(KREW_PLATFORMS); do \
		os=$${p%/*} arch=$${p#*/}; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -ldflags "-s -w" -o dist/krew/kubectl-herald ./cmd/herald; \
		tar -C dist/krew -czf dist/kubectl-herald_$(VERSION)_$${os}_$${arch}.tar.gz kubectl-herald ../../LICENSE --transform 's,.*/,,'; \
	done

$(NATS_SERVER): go.mod go.sum
	CGO_ENABLED=0 go build -trimpath -o $(NATS_SERVER) github.com/nats-io/nats-server/v2

.PHONY: nats-server
nats-server: $(NATS_SERVER) ## Build nats-server at the version go.mod pins.

.PHONY: dev
dev: build nats-server envtest ## Run Herald locally: API server, etcd, NATS, manager and a demo receiver.
	go build -o $(BIN)/herald-dev ./hack/dev
	KUBEBUILDER_ASSETS=$(BIN)/k8s/$(K8S_VERSION) $(BIN)/herald-dev --bin $(BIN)

.PHONY: build-installer
build-installer: manifests ## Write dist/install.yaml (CRDs, RBAC, manager) and dist/install-monitoring.yaml (the same with monitors and alerts).
	mkdir -p dist
	kubectl kustomize config/default > dist/install.yaml
	kubectl kustomize config/monitoring > dist/install-monitoring.yaml
