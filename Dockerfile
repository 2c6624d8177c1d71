# Aspire in a container, with TensorFlow Serving's image contract: the same `docker run` lines
# that start tensorflow/serving start Aspire.
#
# Build (from the repository root; cluster/kuberay/ runs this tag from your registry):
#   docker build -t aspire-serving:0.1.0 .
#   docker build --build-arg CUDA=true -t aspire-serving:0.1.0 .   # + TensorFlow's CUDA libraries,
#                                                                   #   for NVIDIA GPUs
# Serve one model (versions in /path/to/models/half_plus_two/<version>/):
#   docker run --rm -p 8500:8500 -p 8501:8501 --shm-size=2g \
#     -v /path/to/models:/models:ro -e MODEL_NAME=half_plus_two aspire-serving:0.1.0
# Serve a config file (then MODEL_NAME/MODEL_BASE_PATH are not used):
#   docker run --rm -p 8500:8500 -p 8501:8501 --shm-size=2g -v /path/to/models:/models:ro \
#     aspire-serving:0.1.0 --model_config_file=/models/models.config
# With GPUs: --gpus all (NVIDIA Container Toolkit) and an image built with CUDA=true.
# Join a running Ray cluster instead of the embedded Ray: -e RAY_ADDRESS=ray://HEAD:10001 and the
# cluster's token, e.g. -v ~/.ray/auth_token:/home/aspire/.ray/auth_token:ro (readable by uid
# 1000) or -e RAY_AUTH_TOKEN. From outside the cluster only the Ray client port (ray://) works.
#
# Ctrl-C or `docker stop` unloads every version and stops Ray: give it time, `docker stop -t 60`.
# Any other first argument is run as a command: `docker run ... aspire-serving:0.1.0 aspire --version`.
# The flags are documented in docs/configuration.md ("`aspire serve` flags"); docker/entrypoint.sh
# builds the command line, and tests/unit/test_cluster_configs.py checks it against Aspire's own
# parser.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="aspire-serving" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="TensorFlow-Serving-compatible model server on Ray Serve"

# tini: PID 1 that forwards SIGTERM/SIGINT to aspire and reaps the processes an embedded Ray
# leaves. wget: KubeRay's default readiness and liveness probes of Ray pods run it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini wget \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash aspire \
    && mkdir -p /models

# The project from the build context, as a regular (not editable) install. Only the files the
# package needs are copied, so a local .venv or test data never reach the image.
WORKDIR /opt/aspire
COPY pyproject.toml README.md ./
COPY core ./core
COPY config ./config
COPY policies ./policies
COPY cluster ./cluster
COPY deployments ./deployments
# hadolint ignore=DL3013
RUN pip install --no-cache-dir . \
    && aspire --version

# CUDA=true adds the CUDA and cuDNN libraries that the installed TensorFlow was built against
# (TensorFlow's and-cuda extra, at the version pyproject.toml pins); the host brings the driver.
ARG CUDA=false
# hadolint ignore=DL3013
RUN if [ "$CUDA" = true ]; then \
      pip install --no-cache-dir \
        "tensorflow[and-cuda]==$(python -c 'import importlib.metadata as m; print(m.version("tensorflow"))')"; \
    fi

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/aspire-entrypoint

ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    PYTHONUNBUFFERED=1
# gRPC (PredictionService, ModelService) and REST (/v1/models/...).
EXPOSE 8500 8501

USER 1000:1000
WORKDIR /home/aspire
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/aspire-entrypoint"]
