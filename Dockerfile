# vipps-proxy container image.
#
#   docker build -t vipps-proxy .
#   docker run --rm -p 8080:8080 \
#       -e VIPPS_CLIENT_ID -e VIPPS_CLIENT_SECRET -e VIPPS_SUBSCRIPTION_KEY -e VIPPS_MSN \
#       vipps-proxy
#
# The image runs config/container.toml (copied to /app/config/container.toml): it
# listens on 0.0.0.0:8080, lets in private-network clients only, and takes every
# credential from the environment or from files (see docs/operations.md).
#
# tests/test_deploy.py lints this file with hadolint and runs the builder stage's
# commands, the ENTRYPOINT, the CMD, the ENV and the HEALTHCHECK exactly as written
# here, outside Docker: keep builder RUN commands to relative paths and $VIRTUAL_ENV.

# Pinned by full version; bump deliberately (and add @sha256:<digest> where the
# registry can be reached when building, for byte-for-byte reproducible bases).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm
# The image's version label: pyproject.toml's version (tests/test_deploy.py keeps this
# default equal to it; `--build-arg VERSION=...` for a build of another commit).
ARG VERSION=0.1.0

# ---------------------------------------------------------------------------
# builder: a virtual environment with the dependencies, then the project.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"

RUN python -m venv "$VIRTUAL_ENV"

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock changes,
# not on every code change. Exactly the hashed pins of requirements/runtime.lock
# (the build backend included), so an image built next month has the same aiohttp.
COPY requirements/runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r runtime.lock

# The code: a regular (non-editable) install on top, built by the locked setuptools.
COPY pyproject.toml README.md ./
COPY proxy/ proxy/
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# ---------------------------------------------------------------------------
# runtime: the virtual environment and the container config, nothing else.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION
LABEL org.opencontainers.image.title="vipps-proxy" \
      org.opencontainers.image.description="Authenticating reverse proxy for the Vipps MobilePay APIs" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it and volume
# permissions can be planned for it.
RUN groupadd --system --gid 10001 vipps-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin vipps-proxy

ENV VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"

# Owned by root and read-only for the proxy's user: the process cannot change its
# own code or config.
COPY --from=builder /opt/venv /opt/venv
COPY config/container.toml /app/config/container.toml

WORKDIR /app
USER 10001:10001

EXPOSE 8080

# The proxy drains in-flight calls for shutdown_timeout (25 s) after SIGTERM; give
# `docker stop` more than that: `docker stop --time 35`, or stop_grace_period: 35s
# in Compose (Kubernetes: terminationGracePeriodSeconds, see deploy/kubernetes).
STOPSIGNAL SIGTERM

# No curl in a slim image: Python's urllib, with proxies disabled so an
# HTTP(S)_PROXY in the environment cannot reroute the probe. Follows
# VIPPS_PROXY_PORT when the port is overridden.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.build_opener(urllib.request.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('VIPPS_PROXY_PORT', '8080') + '/-/health', timeout=4)"]

ENTRYPOINT ["vipps-proxy"]
CMD ["--config", "/app/config/container.toml"]
