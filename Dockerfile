# cxr-triage service: HTTP API, worklist and viewer on the bundled model.
#   docker build -t cxr-triage .
#   docker run -p 127.0.0.1:8000:8000 -e CXR_API_TOKEN=change-me -v cxr-data:/data cxr-triage
# The install command is the one the README gives for the service (keep them the same:
# tests/test_serve_deploy.py checks it).
FROM docker.io/library/python:3.11-slim

LABEL org.opencontainers.image.title="cxr-triage" \
      org.opencontainers.image.description="Chest X-ray triage service (a decision aid, not a diagnostic device)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    CXR_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin cxr \
    && mkdir -p /data \
    && chown cxr:cxr /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cxrtriage ./cxrtriage
RUN pip install -e ".[serve,pacs]"

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

CMD ["cxr", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
