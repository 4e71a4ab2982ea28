// Package e2e is the end-to-end suite: it installs Herald from
// dist/install.yaml into a real cluster (by default the single-node one
// `make cluster-up` builds from source) and breaks it on purpose. Its files
// carry the e2e build tag, so `make test` does not run them; `make
// test-e2e` does. docs/testing.md says what each spec checks.
package e2e
