# syntax=docker/dockerfile:1
# The moedeploy MoE inference runtime. torch's CUDA wheels bring their own CUDA libraries; the base image
# provides the NVIDIA container runtime's hooks (driver mount, NVIDIA_REQUIRE_CUDA) and the CUDA 13 label
# that matches those wheels. CPU-only nodes run the same image.
# Build from the repository root:  docker build -f images/runtime.Dockerfile -t ghcr.io/moedeploy/runtime:0.1.0 .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.15.0
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The image tag pins the Ubuntu release; Ubuntu drops superseded package versions from its archive, so
# exact apt pins would break later builds while adding nothing the tag doesn't already fix.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
RUN /opt/venv/bin/pip install --no-compile "torch==${TORCH_VERSION}" "./[runtime]" \
    && /opt/venv/bin/python -c "import moe_runtime, torch"

FROM ${CUDA_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# gcc and libc6-dev: the runtime builds its decode-attention kernel for the node's CPU when it first starts
# there (moe_runtime/model/decode_kernel.py; without them attention runs in torch, slower on the CPU).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 moe \
    && useradd --system --uid 10001 --gid moe --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin moe
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "moe_runtime"]
CMD ["serve"]
