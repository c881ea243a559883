# AsyncMTL developer entry points. Everything installs into ./.venv (Python >= 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TWEETEVAL_DIR ?= $(abspath ../shared/data/tweeteval)
export TWEETEVAL_DIR

PROMETHEUS := .tools/prometheus/usr/bin/prometheus

.PHONY: setup tools controlplane demo test test-fast bench tweeteval spec-doc crd install-manifests image-locks images clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	# torch is pinned to the CPU-capable 2.13.0 wheel; everything else comes with the extras
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## install AsyncMTL with every extra into .venv

$(PROMETHEUS):
	# Debian's prometheus 2.42, unpacked without its service setup (operator tests start it themselves)
	mkdir -p .tools/prometheus
	cd .tools && (apt-get download prometheus 2>/dev/null || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb -x .tools/prometheus_*.deb .tools/prometheus && rm -f .tools/prometheus_*.deb
	$(PROMETHEUS) --version | head -1

tools: $(PROMETHEUS) ## test tools that are not Python packages (Prometheus)

controlplane: ## a real Kubernetes control plane for tests/cluster (etcd, kube-apiserver, -controller-manager, -scheduler, kubectl), built from Go modules into .tools/controlplane/bin (first build about 9 min on 2 cores; then a no-op)
	@if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then hack/controlplane/build.sh; \
	else echo "controlplane: no Go toolchain: tests/cluster will skip (and fail under CI)"; fi

demo: setup ## the main job: the quickstart run on the built-in benchmark (a few minutes on 2 idle CPU cores: README)
	$(BIN)/asyncmtl run manifests/examples/quickstart.yaml

test: setup tools controlplane ## the whole test suite (CI runs this)
	$(BIN)/python -m pytest -q -ra

test-fast: setup ## the fast tests only (no processes, servers or training; about a minute)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup ## trainer overhead against a bare PyTorch loop
	$(BIN)/python benchmarks/trainer_overhead.py

tweeteval: setup ## the TweetEval joint run (needs TWEETEVAL_DIR; under 90 minutes on 2 CPU cores)
	$(BIN)/asyncmtl run manifests/examples/tweeteval-joint.yaml --tweeteval-dir $(TWEETEVAL_DIR)

spec-doc: setup ## regenerate docs/spec-reference.md from the spec models
	$(BIN)/asyncmtl spec-doc > docs/spec-reference.md

crd: setup ## regenerate crds/asyncmtlrun.yaml (and the chart's copy) from the spec models
	$(BIN)/asyncmtl crd > crds/asyncmtlrun.yaml
	cp crds/asyncmtlrun.yaml helm/asyncmtl-operator/crds/asyncmtlrun.yaml

install-manifests: setup ## regenerate manifests/install/ from the chart (for users without Helm)
	$(BIN)/python helm/render_install.py

image-locks: setup ## regenerate the images' dependency lists (operator/, trainer_image/requirements.txt) from pyproject's extras
	$(BIN)/python hack/image_locks.py

IMAGE_TAG ?= 0.1.0
images: ## build the operator and trainer images (needs a Docker engine)
	docker build -f operator/Dockerfile -t asyncmtl/operator:$(IMAGE_TAG) .
	docker build -f trainer_image/Dockerfile -t asyncmtl/trainer:$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) runs .pytest_cache
