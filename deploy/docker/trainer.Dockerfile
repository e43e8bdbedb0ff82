# The loraloop trainer: scheduled runs of any method (DPO by default; QLoRA ready), the eval gate, `adapters add|compare`.
# CUDA base: training (bf16 on GPU, QLoRA's 4-bit base) needs the CUDA runtime.
#   docker build -f deploy/docker/trainer.Dockerfile -t loraloop-trainer .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LORALOOP_DATA_DIR=/data HF_HOME=/data/hf-cache VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY gateway ./gateway
COPY trainer ./trainer
# CUDA torch from PyPI; training needs no vLLM in this image (the vLLM image serves).
RUN pip install ".[train,qlora]" \
    && useradd --create-home --uid 10001 loraloop \
    && mkdir -p /data && chown loraloop /data

# HF_TOKEN (gated base models) and the database URL come from the environment, never the image.
USER loraloop
# A live scheduler process touches its job store; a one-shot run exits. Either way the
# database is what must be reachable.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "from adapters.settings import StoreSettings; from adapters.db import make_engine; from sqlalchemy import text; e = make_engine(StoreSettings().db_url); e.connect().execute(text('select 1'))"]
ENTRYPOINT ["loraloop"]
CMD ["scheduler"]
