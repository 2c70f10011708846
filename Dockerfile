# kubeguard: `docker build -t pod-eviction-protection:latest .` (seed 000), then
# `kubectl apply -f deploy/`. Reproducible from pyproject.toml + constraints.txt.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/kubeguard
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# Pinned by constraints.txt; bytecode compiled here because the root filesystem is read-only.
RUN /opt/kubeguard/bin/pip install -c constraints.txt . \
    && /opt/kubeguard/bin/python -m compileall -q /opt/kubeguard/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubeguard" \
      org.opencontainers.image.description="Kubernetes admission webhooks: pod eviction protection" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/kubeguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/kubeguard /opt/kubeguard
# Non-root, numeric (runAsNonRoot can verify it); writes only to /tmp (an emptyDir).
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443
ENTRYPOINT ["kubeguard"]
CMD ["serve"]
