# Everything a developer or CI runs. `make demo` and `make test` set up what they need on a fresh machine.
.PHONY: all build image demo test test-env test-env-down crds manifests lint bench

all: build

build:
	cargo build --locked

## The operator image (secretsync:dev, or IMAGE=...): from the Dockerfile's public bases when they are
## reachable, else the same layout from local parts. Starts dockerd (hack/docker.sh) if none answers.
image:
	DOCKER_HOST=$$(hack/docker.sh up) hack/build-image.sh

## Build, start the local stack, sync a sample secret and show a rotation reaching the Secret.
demo:
	hack/demo.sh

## Lint, then every test against the real API server and moto (the stack starts if needed).
test:
	hack/run-tests.sh

## Numbers for N ExternalSecrets (BENCH_N, default 1000): first sync, AWS calls per quiet hour per version
## check strategy, rotation propagation p50/p99, peak RSS, moto's own ceiling; then one ClusterExternalSecret
## over BENCH_NAMESPACES (default 500) namespaces. Release build; not a test.
bench:
	hack/testenv.sh up
	cargo bench --locked --bench rotation
	cargo bench --locked --bench cluster_external_secret

## The local stack: etcd, kube-apiserver, kube-controller-manager and moto, on loopback.
test-env:
	hack/testenv.sh up

test-env-down:
	hack/testenv.sh down

## Regenerate crds/ and the chart's copy from the Rust types.
crds:
	cargo run --quiet --locked -- crds > crds/secretsync.yaml
	cp crds/secretsync.yaml charts/secretsync/crds/secretsync.yaml
	hack/generate-manifests.sh

## Regenerate config/ (plain manifests) and the chart README's values table from the chart.
manifests:
	hack/generate-manifests.sh
	hack/chart-values-table.py

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
