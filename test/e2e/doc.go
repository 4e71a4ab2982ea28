// Package e2e will hold the end-to-end suite that installs Herald from
// dist/install.yaml into a real cluster and breaks it on purpose (make
// test-e2e). It is separate from `make test`, which needs no cluster; until
// the suite lands, the envtest suites in internal/ cover the operator and
// the dispatcher against a real API server, NATS and HTTP receivers.
package e2e
