# Levity, the OCPP 1.6J central system, as a container image.
#
#   docker build -t levity .                                      # python:3.11-slim-bookworm
#   podman build --format docker --build-arg BASE_IMAGE=localdebian:bookworm -t levity .
#
# BASE_IMAGE may be an official Python image or a bare Debian 12 (python3 and python3-venv
# come from apt when the base has no usable python3). Podman keeps HEALTHCHECK only with
# `--format docker`. Dependencies install before the source is copied, so editing Levity
# rebuilds only the last layers.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
RUN set -eu; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build stage: a virtual environment with the dependencies, then Levity's wheel built by a
# separate build venv (the build backend stays out of the image).
FROM base AS build
# A CA bundle for pip when PyPI is reached through a TLS-intercepting proxy: a path inside the
# build, e.g. `podman build -v /etc/ssl/certs:/run/host-certs:ro
# --build-arg PIP_CA_BUNDLE=/run/host-certs/ca-certificates.crt`. Empty: pip's own CAs.
ARG PIP_CA_BUNDLE=
RUN python3 -m venv /opt/levity && python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml ./
# Runtime dependencies (with the PostgreSQL driver: LEVITY_DATABASE=postgresql://...) and the build
# backend, read from pyproject.toml (one list, no copy).
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
open("/tmp/runtime.txt", "w").write("\n".join(p["project"]["dependencies"] \
    + p["project"]["optional-dependencies"]["postgresql"])); \
open("/tmp/build.txt", "w").write("\n".join(p["build-system"]["requires"]))' \
 && /opt/levity/bin/pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} -r /tmp/runtime.txt \
 && /opt/build/bin/pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} -r /tmp/build.txt
# The rest of the context: .dockerignore lets in only README.md, levity/, templates/,
# profiles/ and share/ (the wheel carries the last three).
COPY . ./
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation -w /tmp/dist . \
 && /opt/levity/bin/pip install --no-deps /tmp/dist/levity-*.whl \
 && /opt/levity/bin/levity --version

# Runtime stage: the base plus the venv, running as an unprivileged user.
FROM base
RUN groupadd --system levity \
 && useradd --system --gid levity --home-dir /var/lib/levity --no-create-home --shell /usr/sbin/nologin levity \
 && install -d -o levity -g levity -m 0750 /var/lib/levity
COPY --from=build /opt/levity /opt/levity
ENV PATH=/opt/levity/bin:$PATH \
    LEVITY_HOST=0.0.0.0 \
    LEVITY_PORT=9000 \
    LEVITY_API_HOST=0.0.0.0 \
    LEVITY_DATABASE=/var/lib/levity/levity.db \
    LEVITY_SPOOL_DIR=/var/lib/levity/spool
USER levity
WORKDIR /var/lib/levity
VOLUME /var/lib/levity
# 9001: the operator API (a bearer token on every request; publish it only where operators are).
EXPOSE 9000 9001
# The server answers plain HTTP GET /health with 200 on its OCPP port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('LEVITY_PORT', '9000'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % port, timeout=4).status == 200 else 1)"]
CMD ["levity", "serve"]
