# The one Hodei image every jobspec and the Terraform module run: `hodei server`,
# `hodei gateway`, `hodei agent` (the jobspecs give the command).
#
#   docker build -t hodei:0.1.0 .
#
# BASE_IMAGE is any Debian-like image with Python >= 3.11 and its venv module: the official
# slim image by default; .ci/build-image makes one from Debian packages (mmdebstrap) where
# no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
LABEL hodei.build-stage="true"
COPY . /src
# .build/ca-certificates.crt: a CA bundle the build script passes when PyPI is reached
# through a TLS-intercepting proxy. It stays in this stage, never in the image.
RUN set -eu; \
    if [ -s /src/.build/ca-certificates.crt ]; then \
        export PIP_CERT=/src/.build/ca-certificates.crt; \
    fi; \
    python3 -m venv /opt/hodei; \
    /opt/hodei/bin/pip install --no-cache-dir --disable-pip-version-check --quiet /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/hodei /opt/hodei
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hodei --create-home hodei
ENV PATH=/opt/hodei/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# Server and gateway need no privilege; the agent's jobspec runs it as root, the owner of
# the Docker socket it mounts.
USER hodei
WORKDIR /var/lib/hodei
STOPSIGNAL SIGTERM
CMD ["hodei", "--help"]
