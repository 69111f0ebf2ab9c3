# syntax=docker/dockerfile:1
# Kairos: `kairos run` (uvicorn + uvloop + httptools behind the connection guard) in a slim Python
# 3.11 image. Build: docker build -t kairos .   Run: docker run -p 5900:5900 kairos
# Not built on the project's machines (no Docker engine, no registry for base images there):
# tests/deploy/test_manifests.py lints this file with hadolint and checks its contract
# (docs/deploy.md).
#
# Base image pinned by tag: bump the patch release (and add an @sha256 digest where builds must be
# reproducible) on purpose, not by accident.

# -- Build stage: a wheel of Kairos, then Kairos and its dependencies in a virtualenv. ------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kairos ./kairos
COPY admin ./admin
# Every dependency ships manylinux wheels for CPython 3.11 (httptools, uvloop, brotli, zstandard,
# asyncpg, ...), so no compiler is needed; the second step installs from /wheels only (--no-index).
RUN pip wheel --wheel-dir /wheels ".[http2]" \
    && python -m venv /opt/kairos \
    && /opt/kairos/bin/pip install --no-index --find-links /wheels "kairos[http2]" \
    && /opt/kairos/bin/kairos --help > /dev/null

# -- Runtime stage: the virtualenv, a fixed non-root user, nothing written outside /data and /tmp. --
FROM python:3.11.14-slim-bookworm
# UID/GID 10001: fixed, so Kubernetes can check runAsNonRoot and volumes can be chowned to it.
RUN groupadd --system --gid 10001 kairos \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kairos \
    && mkdir -p /app /data \
    && chown 10001:10001 /data
COPY --from=build /opt/kairos /opt/kairos
# The default config (demo routes to 127.0.0.1:9101): mount your own over /app/config.json (the
# kairos-rs image's location) or point KAIROS_CONFIG_PATH elsewhere (compose and Kubernetes use
# /etc/kairos/config.json, a read-only mounted directory, so live reload sees edits).
COPY examples/config.json /app/config.json
# Read-only root filesystem friendly: HOME and every scratch file live under /tmp (a tmpfs or an
# emptyDir); the only persistent write is the LLM analytics SQLite database under /data (used only
# by "protocol": "llm" routes; KAIROS_ANALYTICS_URL=postgresql://... moves it, KAIROS_ANALYTICS=false
# turns it off). Several workers (KAIROS_WORKERS) keep their metrics in a directory under /tmp.
ENV PATH=/opt/kairos/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KAIROS_CONFIG_PATH=/app/config.json \
    KAIROS_HOST=0.0.0.0 \
    KAIROS_PORT=5900 \
    KAIROS_ANALYTICS_URL=sqlite:////data/kairos-analytics.db
WORKDIR /app
VOLUME ["/data"]
USER 10001:10001
EXPOSE 5900
# SIGTERM starts `kairos run`'s drain: /ready answers 503 while requests are still served for
# KAIROS_DRAIN_DELAY seconds, then requests in flight get up to KAIROS_DRAIN_TIMEOUT to finish.
STOPSIGNAL SIGTERM
# /live: the process answers (no curl in the image: Python's urllib). Readiness (/ready) is the
# orchestrator's business: Kubernetes probes it itself (deploy/k8s/deployment.yaml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:' + os.environ.get('KAIROS_PORT', '5900') + '/live', timeout=2).status != 200)"]
# The same server and settings as `kairos run` on a host: KAIROS_* variables, or arguments after
# the image name (docker run kairos --workers 2).
ENTRYPOINT ["kairos", "run"]
