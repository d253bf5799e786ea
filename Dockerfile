# simstream image: the emitter, the consumer and the kernel-shaping testbed.
#
# Without a registry (air-gapped clusters, CI): `make image` (docker/make-image.sh)
# makes a local Debian base with debootstrap, fills docker/wheelhouse on the host
# and builds this file with BASE_IMAGE set to that base; nothing is fetched from
# inside the build (pip --no-index from the wheelhouse).
#
# With a registry, CPU build (default): a slim Python base and a CPU build of torch.
#   docker build -t simstream .
# CUDA build: a CUDA runtime base and torch from the matching CUDA wheel index.
#   docker build -t simstream:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# (without a registry: make the base from a CUDA runtime root file system and fill
# the wheelhouse with `TORCH_SPEC` from the CUDA index instead of the CPU one).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# torch comes from its own index so a CPU image never pulls CUDA wheels (several GB)
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=consumer,capture,report

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# iproute2: tc and ip for kernel shaping (`simstream testbed up --i-know-iface eth0`).
# The local base has them; a registry base gets them (and Python, for CUDA bases).
RUN if ! command -v tc >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1 \
       || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends iproute2 ca-certificates \
           python3 python3-venv python3-pip \
      && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# docker/wheelhouse: simstream's wheel and its requirements, made on the host by
# `make image`; empty in a plain checkout, then pip uses the package index
# (--no-compile: byte code is written on first import, which saves the build
# compiling all of torch)
COPY docker/wheelhouse /wheelhouse
COPY pyproject.toml README.md LICENSE docker-compose.yml /src/
COPY simstream /src/simstream
COPY pipeline /src/pipeline
COPY profiles /src/profiles
RUN if ls /wheelhouse/simstream-*.whl >/dev/null 2>&1; then \
      pip install --no-compile --no-index --find-links /wheelhouse "simstream[${EXTRAS}]"; \
    else \
      pip install --upgrade pip \
      && pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
      && pip wheel --no-deps -w /wheelhouse /src \
      && pip install "$(ls /wheelhouse/simstream-*.whl)[${EXTRAS}]"; \
    fi \
 && rm -rf /wheelhouse /src \
 && simstream --version

# the run directory exists in the image, so a fresh `runs` volume starts with it
RUN mkdir -p /runs/testbed
VOLUME ["/runs"]
CMD ["simstream", "--help"]
