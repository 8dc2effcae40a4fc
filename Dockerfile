# liverec application image: trainer, serving and replay all run from it.
# torch comes from the CPU wheel index so the image carries no CUDA libraries.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3"

COPY pyproject.toml README.md ./
COPY online_models ./online_models
COPY stream ./stream
COPY serving ./serving
COPY liverec ./liverec
RUN pip install .

RUN useradd --create-home --uid 10001 liverec && mkdir -p /snapshots /data && chown liverec /snapshots /data
USER liverec

ENTRYPOINT ["liverec"]
CMD ["--help"]
