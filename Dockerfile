# syntax=docker/dockerfile:1
#
# gadget-operator container image.
#
#   docker build -t ghcr.io/gadget-operator/gadget-operator:0.1.0 .
#
# Two stages: the builder turns the project and its dependencies (the version ranges pinned in
# pyproject.toml) into wheels and installs them, offline, into the virtualenv /opt/venv; the final
# image is the slim Python base plus that virtualenv, running as a non-root user.
#
# Read-only root filesystem: the operator writes nothing to disk. The bytecode is compiled at build
# time (pip install does it) and PYTHONDONTWRITEBYTECODE=1 stops Python from trying to write .pyc
# files at run time, so the Deployment runs it with `readOnlyRootFilesystem: true` (it mounts an
# emptyDir on /tmp only as a precaution for libraries that want a scratch file).
#
# No HEALTHCHECK: Kubernetes ignores it; the Deployment's probes use kopf's /healthz on port 8080.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip wheel --wheel-dir /wheels --requirement /tmp/requirements.txt

# Then the project itself (no dependencies: they are already in /wheels).
COPY README.md ./
COPY operator/ operator/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels gadget-operator \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/gadget-operator --version


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gadget-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps Inspektor Gadget gadget instances running on the right nodes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gadget-operator/gadget-operator"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed non-root uid/gid (65532, as in distroless "nonroot"), so `runAsNonRoot` can verify it.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin nonroot

COPY --from=builder /opt/venv /opt/venv

USER 65532:65532
# 8080: kopf's liveness endpoint (/healthz); 9090: Prometheus metrics (/metrics).
EXPOSE 8080 9090
# kopf handles SIGTERM itself (graceful stop), so the operator can run as PID 1.
ENTRYPOINT ["gadget-operator", "run"]
