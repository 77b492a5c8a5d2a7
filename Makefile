# Nauthera developer entry points. `make demo` runs the main job on examples/, `make test` the test suite.
PYTHON ?= python3
TOOLS_BIN := $(CURDIR)/.tools/bin
TOOL_NAMES := opa regal gator etcd kube-apiserver kubectl gatekeeper registry
export PATH := $(TOOLS_BIN):$(PATH)

.PHONY: setup deps tools sarif-tool gatekeeper-crds demo demo-kubernetes test lint typecheck rego-gates pytest golden clean bench bench-deps reliability

setup: deps tools sarif-tool

deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Each engine is pinned by its own module under tools/ (go.mod + go.sum), so its dependency graph is
# exactly the one upstream released; the binaries land in the git-ignored .tools/bin.
tools: $(addprefix $(TOOLS_BIN)/,$(TOOL_NAMES)) gatekeeper-crds

# The Kubernetes tests install Gatekeeper's CRDs from the pinned module's deploy/gatekeeper.yaml in the
# Go module cache: make sure it is there (instant when it is, as after building gatekeeper).
gatekeeper-crds:
	cd tools/gatekeeper && go mod download github.com/open-policy-agent/gatekeeper/v3

$(TOOLS_BIN)/%: tools/%/go.mod tools/%/go.sum
	cd tools/$* && GOBIN=$(TOOLS_BIN) go install tool
	@test -x $@ || { echo "make tools: $* was not built" >&2; exit 1; }
	@touch $@

# etcd's main package is go.etcd.io/etcd/server/v3, which `go install` would name "server".
$(TOOLS_BIN)/etcd: tools/etcd/go.mod tools/etcd/go.sum
	cd tools/etcd && go build -o $@ go.etcd.io/etcd/server/v3
	@test -x $@ || { echo "make tools: etcd was not built" >&2; exit 1; }
	@touch $@

# kube-apiserver and kubectl share tools/kubernetes. Unstamped they report v0.0.0-master, so they are
# stamped with the pinned release's version and, for reproducible binaries, its publication time as the
# build date. KUBE_RELEASE ("v1.37.2 2026-10-27T12:01:04Z") runs `go list` once, only when a recipe needs it.
KUBE_RELEASE = $(eval KUBE_RELEASE := $$(shell cd tools/kubernetes && go list -m -f '{{.Version}} {{.Time.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes))$(KUBE_RELEASE)
KUBE_SEMVER = $(subst ., ,$(patsubst v%,%,$(word 1,$(KUBE_RELEASE))))
KUBE_LDFLAGS = $(if $(word 2,$(KUBE_RELEASE)),,$(error make tools: no k8s.io/kubernetes version from tools/kubernetes))\
	$(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(pkg).gitVersion=$(word 1,$(KUBE_RELEASE)) -X $(pkg).gitMajor=$(word 1,$(KUBE_SEMVER)) \
	-X $(pkg).gitMinor=$(word 2,$(KUBE_SEMVER)) -X $(pkg).gitTreeState=clean -X $(pkg).buildDate=$(word 2,$(KUBE_RELEASE)))

$(TOOLS_BIN)/kube-apiserver $(TOOLS_BIN)/kubectl: $(TOOLS_BIN)/%: tools/kubernetes/go.mod tools/kubernetes/go.sum
	cd tools/kubernetes && go build -ldflags '$(strip $(KUBE_LDFLAGS))' -o $@ k8s.io/kubernetes/cmd/$*
	@test -x $@ || { echo "make tools: $* was not built" >&2; exit 1; }
	@touch $@

# Microsoft's SARIF validator (`sarif-multitool`, a self-contained .NET binary in an npm package) checks
# `compile --format sarif` in the tests. Pinned by tools/sarif/package-lock.json and installed with `npm ci`
# into the git-ignored tools/sarif/node_modules; needs Node.js with npm. npm may withhold the package's
# install script (it only marks the binary executable), so the mode is set here.
SARIF_MULTITOOL := tools/sarif/node_modules/.installed
sarif-tool: $(SARIF_MULTITOOL)

$(SARIF_MULTITOOL): tools/sarif/package.json tools/sarif/package-lock.json
	cd tools/sarif && npm ci --no-audit --no-fund --loglevel=error
	chmod u+x tools/sarif/node_modules/@microsoft/sarif-multitool-*/Sarif.Multitool
	@touch $@

demo: setup
	rm -rf build/examples
	nauthera compile examples/policies --out build/examples
	nauthera check --bundle build/examples/bundle.tar.gz examples/clients || true
	nauthera check --bundle build/examples/bundle.tar.gz examples/clients --format json > build/examples/decisions.json || true
	@echo "decision documents: build/examples/decisions.json"

# A local control plane (etcd + kube-apiserver on loopback) where the OPA webhook, fed by the sidecar on
# examples/policies, admits or refuses every examples/clients file through kubectl; about 20 s.
demo-kubernetes: setup
	$(PYTHON) -m demo.kubernetes

lint:
	ruff check compiler tests bench demo
	ruff format --check compiler tests bench demo
	lint-imports

typecheck:
	mypy --strict compiler

pytest:
	$(PYTHON) -m pytest -q

golden:
	NAUTHERA_REGEN_GOLDEN=1 $(PYTHON) -m pytest -q tests/targets/opa

# docs/reliability.md from what the probe, fault and load runs measured (build/reliability/*.json,
# written by `make test`, and bench/results/fleet.json, written by `make bench`).
reliability:
	$(PYTHON) -m tests.harness.reliability

test: setup lint typecheck pytest

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (bench/README.md): about 13 minutes on 2 cores; never part of `make test`. nginx (the
# bundle-server anchor) and wrk (the load generator) come from Debian's packages when missing.
bench-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null; }

bench: setup bench-deps
	$(PYTHON) -m bench.run $(BENCH_ARGS)
