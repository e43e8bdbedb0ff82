# The loraloop gateway: the OpenAI-compatible endpoint, feedback, admin API, experiment judge.
# It never imports torch or vLLM (those run in the vLLM and trainer images), so it needs no
# CUDA base: a slim Python image keeps it small and quick to scale out.
#   docker build -f deploy/docker/gateway.Dockerfile -t loraloop-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LORALOOP_HOST=0.0.0.0 LORALOOP_PORT=8000 LORALOOP_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY gateway ./gateway
COPY trainer ./trainer
RUN pip install . \
    && useradd --create-home --uid 10001 loraloop \
    && mkdir -p /data && chown loraloop /data

# No keys, URLs or passwords here: LORALOOP_DATABASE_URL, LORALOOP_UPSTREAMS and the rest
# come from the environment (compose file, Kubernetes Secret/ConfigMap).
USER loraloop
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["loraloop"]
CMD ["serve"]
