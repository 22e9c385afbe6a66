# syntax=docker/dockerfile:1
# The moedeploy operator: kopf + the Kubernetes and Prometheus clients, no torch.
# Build from the repository root:  docker build -f images/operator.Dockerfile -t ghcr.io/moedeploy/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.12.12-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# the distribution holds both packages; without the [runtime] extra nothing pulls torch in
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
RUN /opt/venv/bin/pip install --no-compile ./ \
    && /opt/venv/bin/python -c "import moe_operator, kopf, kubernetes"

FROM ${PYTHON_IMAGE}
# a named user, so that getpass and kopf's peering identity never meet an unknown uid
RUN groupadd --system --gid 10001 moe \
    && useradd --system --uid 10001 --gid moe --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin moe
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["python", "-m", "moe_operator"]
CMD ["run"]
