# The two commands a new user runs: `make demo` and `make test`.
# Both create the virtual environment and install everything first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# On machines without CUDA a CPU build of torch is installed before the
# package, so the consumer extra's torch range is already met and no CUDA
# build (several GB) is pulled. Override for your site, e.g.
#   make test TORCH_CPU="torch --index-url <your CPU wheel index>"
TORCH_CPU ?= torch==2.13.0
PROFILE ?= profiles/bursty.yaml

.PHONY: all demo test test-fast lint typecheck bench soak system-deps docker-testbed image clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "CUDA device found: torch comes with the consumer extra"; \
	  else \
	    echo "no CUDA device: installing a CPU build of torch ($(TORCH_CPU))"; \
	    $(PY) -m pip install -q $(TORCH_CPU); \
	  fi; \
	fi
	$(PY) -m pip install -q -e ".[all]"
	@touch $(STAMP)

# Debian packages the tests use (root only; a no-op where they are present):
# iproute2 for kernel shaping; docker.io, docker-compose and debootstrap for the
# compose testbed (the engine, the compose client, the registry-free base image).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  command -v tc >/dev/null 2>&1 || need="$$need iproute2"; \
	  command -v ip >/dev/null 2>&1 || need="$$need iproute2"; \
	  command -v dockerd >/dev/null 2>&1 || need="$$need docker.io"; \
	  command -v docker-compose >/dev/null 2>&1 || need="$$need docker-compose"; \
	  command -v debootstrap >/dev/null 2>&1 || need="$$need debootstrap"; \
	  if [ -n "$$need" ]; then \
	    { timeout 300 apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	      timeout 600 apt-get install -y -q $$need; } \
	      || echo "warning: could not install$$need; the tests that need them will say so and skip"; \
	  fi; \
	fi

# The simstream image without a registry: a debootstrap base (cached in
# ~/.cache/simstream), a wheelhouse made here, docker build (docker/make-image.sh).
image: $(STAMP)
	PYTHON=$(PY) docker/make-image.sh

# For tests/test_compose_live.py in `make test`: start the Docker engine when it is
# not running and build the image, each step bounded (DOCKER_PREP_S in all for the
# image). Never fails and never waits unbounded: when a step cannot be done, the
# test skips and says why.
DOCKER_PREP_S ?= 400
docker-testbed: $(STAMP)
	-@if [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1 \
	    && ! timeout 20 docker info >/dev/null 2>&1; then \
	  echo "starting dockerd (log: /tmp/simstream-dockerd.log)"; \
	  setsid nohup dockerd </dev/null >/tmp/simstream-dockerd.log 2>&1 & \
	  for i in $$(seq 30); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done; \
	fi; \
	if timeout 20 docker info >/dev/null 2>&1; then \
	  start=$$(date +%s); \
	  if timeout -k 10 $(DOCKER_PREP_S) env PYTHON=$(PY) docker/make-image.sh; then \
	    echo "docker-testbed: image ready in $$(( $$(date +%s) - start )) s"; \
	  else \
	    echo "warning: the image was not built within $(DOCKER_PREP_S) s; the compose test will skip"; \
	  fi; \
	else \
	  echo "warning: no Docker engine here; the compose test will skip"; \
	fi

demo: $(STAMP)
	$(BIN)/simstream run --profile $(PROFILE)

test: $(STAMP) system-deps docker-testbed
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not integration"

lint: $(STAMP)
	$(BIN)/ruff check simstream pipeline tests bench
	$(BIN)/mypy

# Benchmarks: each prints its figures with the machine; see BENCHMARKS.md for
# the ones that need root (bench_shaping) or a GPU (bench_gpu, bench_socket_vs_random,
# bench_scale's figures).
bench: $(STAMP)
	$(PY) bench/bench_codec.py
	$(PY) bench/bench_emit.py
	$(PY) bench/bench_consumer_overhead.py
	$(PY) bench/bench_diagnose.py
	$(PY) bench/bench_queue.py
	$(PY) bench/bench_ranks.py
	$(PY) bench/bench_scale.py --cases 1x1x1,2x2x1 --duration 8 --shape 1,256,256

# Not in CI: the bursty profile end to end for SOAK_MINUTES; resident memory and
# open file descriptors of both programs, every message accounted for.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
