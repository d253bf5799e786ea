# simstream image: the emitter, the consumer and the kernel-shaping testbed.
#
# CPU build (default): a slim Python base and a CPU build of torch.
#   docker build -t simstream .
# CUDA build: a CUDA runtime base and torch from the matching CUDA wheel index.
#   docker build -t simstream:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# torch comes from its own index so a CPU image never pulls CUDA wheels (several GB)
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# iproute2: tc and ip for kernel shaping (`simstream testbed up --i-know-iface eth0`).
# CUDA bases carry no Python: install it there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 ca-certificates \
 && if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv" 2>/dev/null; then \
      apt-get install -y --no-install-recommends python3 python3-venv python3-pip; \
    fi \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip \
 && pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

WORKDIR /opt/simstream
COPY . .
RUN pip install ".[consumer,capture,report]"

# bundled profiles are in the image too; compose mounts ./profiles over them
RUN mkdir -p /profiles /runs && cp -r profiles/. /profiles/
VOLUME ["/runs"]
CMD ["simstream", "--help"]
