# liverec application image: trainer, serving and replay all run from it (`liverec CMD`).
#
# Build with BuildKit (docker buildx / compose v2, or DOCKER_BUILDKIT=1 with an engine's
# own CLI); scripts/build-images.sh does it for this repo and builds the base locally:
#   docker build -t liverec:latest .
# Wheels are built in builder stages (hnswlib ships only as source and needs a C++
# compiler); the runtime stage installs them without the compiler. Dependencies come
# from pyproject.toml at the versions constraints.txt pins, and are installed in their
# own layer before liverec's code, so a code change rebuilds only the last, small layer.
# torch is the package index's default wheel (its CUDA libraries included: the CPU-only
# wheels live on another index).
# Optional build secrets `cacerts` and `pipconf` (a CA bundle and a pip.conf) reach a
# package index behind a TLS-intercepting proxy; they never enter a layer.
ARG LIVEREC_BASE_IMAGE=python:3.11-slim

# The dependency list alone: the layers below it are reused until it changes (a COPY of
# an unchanged file keeps the cache; edits elsewhere in pyproject.toml do not bust it).
FROM ${LIVEREC_BASE_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' > /requirements.txt
# The versions `make install` pins (constraints.txt): the image runs what the suite tested.
COPY constraints.txt /constraints.txt

FROM ${LIVEREC_BASE_IMAGE} AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# Python's headers: part of python:3.11-slim, Debian's python3-dev on a plain Debian base.
RUN extra=$(python3 -c 'import os, sysconfig; print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "python3-dev")') \
 && apt-get update \
 && apt-get install -y --no-install-recommends build-essential $extra \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY --from=requirements /requirements.txt /constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacerts,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip wheel --wheel-dir /wheels -r requirements.txt -c constraints.txt

# liverec's own wheel, in its own stage so a code change leaves the stage above cached
# (.dockerignore keeps tests, docs, data and caches out of the context).
FROM wheels AS dist
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=cacerts,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip wheel --no-deps --wheel-dir /dist .

FROM ${LIVEREC_BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# curl for the compose health checks; no JRE (Kafka runs in its own image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 10001 liverec \
 && mkdir -p /snapshots /data \
 && chown liverec /snapshots /data

# Dependencies: this layer is reused until pyproject.toml's dependency list changes.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels -r /tmp/requirements.txt

# liverec itself: the only layer a code change rebuilds.
RUN --mount=type=bind,from=dist,source=/dist,target=/dist \
    pip install --no-deps /dist/*.whl \
 && liverec --help > /dev/null

USER liverec
WORKDIR /home/liverec
ENTRYPOINT ["liverec"]
CMD ["--help"]
