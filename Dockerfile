# care-router: one image for `pipeline worker`, `pipeline ingest` and the CLI.
# Slim, pinned (base image by version, Python packages by deploy/constraints.txt), non-root.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY pipeline ./pipeline
RUN /opt/venv/bin/pip install --constraint deploy/constraints.txt .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 care \
 && useradd --system --uid 10001 --gid care --home-dir /var/lib/care-router \
      --shell /usr/sbin/nologin care \
 && mkdir -p /var/lib/care-router \
 && chown care:care /var/lib/care-router
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPELINE_DATA_DIR=/var/lib/care-router \
    PIPELINE_WEB_HOST=0.0.0.0 \
    PIPELINE_INGEST_HOST=0.0.0.0 \
    PIPELINE_SMTP_HOST=0.0.0.0 \
    PIPELINE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/care-router
VOLUME ["/var/lib/care-router"]
# worker /metrics /healthz /readyz; ingest HTTP; ingest SMTP
EXPOSE 6066 8080 2525
ENTRYPOINT ["pipeline"]
CMD ["worker"]
