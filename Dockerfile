# liverec application image: trainer, serving and replay all run from it.
# torch comes from the CPU wheel index so the image carries no CUDA libraries.
# Wheels are built in a builder stage (hnswlib ships only as source and needs a C++
# compiler); the runtime stage gets the wheels, not the compiler.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY online_models ./online_models
COPY stream ./stream
COPY serving ./serving
COPY liverec ./liverec
RUN pip wheel --wheel-dir /wheels \
      --extra-index-url https://download.pytorch.org/whl/cpu "torch>=2.3" . \
 && rm -f /wheels/nvidia_* /wheels/triton-*

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# curl for the compose health checks; a JRE is not needed (Kafka runs in its own image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels liverec && rm -rf /wheels

RUN useradd --create-home --uid 10001 liverec \
 && mkdir -p /snapshots /data && chown liverec /snapshots /data
USER liverec
WORKDIR /home/liverec

ENTRYPOINT ["liverec"]
CMD ["--help"]
