# The worker's image. CPU by default; for a CUDA image pass a CUDA runtime base:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
ARG BASE_IMAGE=python:3.11-slim

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker worker
COPY schemas schemas
COPY config config
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*)) \
    && useradd --create-home --uid 10001 zsc
COPY --from=build /wheels /wheels
RUN python3 -m pip install --no-cache-dir --break-system-packages /wheels/*.whl 2>/dev/null \
    || python3 -m pip install --no-cache-dir /wheels/*.whl; rm -rf /wheels
USER zsc
# The hub cache is a volume so model weights survive container restarts.
ENV HF_HOME=/home/zsc/.cache/huggingface
VOLUME ["/home/zsc/.cache/huggingface"]
EXPOSE 9108
# Exec form: the worker is PID 1 and gets SIGTERM itself, so it commits before exiting.
ENTRYPOINT ["zsc-worker"]
CMD ["run", "--config", "/etc/zsc-worker/config.yaml"]
