# syntax=docker/dockerfile:1
# The distill-operator image: the kopf operator (operator/distill_operator) and the DistillJob API
# (operator/distill_api). Build from the repository root:
#   docker build -t ghcr.io/distill-operator/operator:0.1.0 .
# Dependencies are requirements/operator.in at the versions pinned in requirements/lock.txt, the
# pins `make install` uses (tests/chart/test_images.py checks this file against both).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/operator.in requirements/lock.txt /tmp/requirements/
# Wheels only: nothing is compiled, so no compiler is needed in either stage.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        -r /tmp/requirements/operator.in -c /tmp/requirements/lock.txt

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="distill-operator" \
      org.opencontainers.image.description="Kubernetes operator for on-policy distillation (DistillJob)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The chart runs the pod as 10001 with a read-only root filesystem (and /tmp on an emptyDir).
RUN groupadd --system --gid 10001 distill \
    && useradd --system --uid 10001 --gid distill --no-create-home --shell /usr/sbin/nologin distill
COPY --from=deps /opt/venv /opt/venv
COPY operator/distill_api /app/distill_api
COPY operator/distill_operator /app/distill_operator
USER 10001:10001
WORKDIR /app
# 8080: kopf liveness (/healthz); 9100: Prometheus metrics (/metrics).
EXPOSE 8080 9100
ENTRYPOINT ["python", "-m", "distill_operator"]
CMD ["--all-namespaces", "--standalone"]
