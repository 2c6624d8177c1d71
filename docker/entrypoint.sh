#!/usr/bin/env bash
# Entrypoint of the Aspire image (../Dockerfile): TensorFlow Serving's image contract.
#
#   MODEL_NAME       model name (default: model)
#   MODEL_BASE_PATH  directory of the model repository (default: /models); the model is served
#                    from ${MODEL_BASE_PATH}/${MODEL_NAME}/<version>/
#   RAY_ADDRESS      unset: Aspire starts an embedded Ray inside the container. Set (for example
#                    ray://aspire-head-svc:10001): Aspire joins that Ray cluster (--address).
#
# It runs `aspire serve --model_name=... --model_base_path=... --port=8500 --rest_api_port=8501
# --rest_api_host=0.0.0.0 [--address=$RAY_ADDRESS] "$@"`. Arguments given to `docker run IMAGE`
# come last, so they add flags or override these (the last value of a flag wins). With
# --model_config_file the models come from that file, and --model_name/--model_base_path are not
# passed at all. A first argument that is not a flag is run as a command instead
# (`docker run IMAGE aspire status --address=...`, `docker run -it IMAGE bash`).
#
# `exec` replaces this shell with aspire, so SIGTERM (docker stop, Kubernetes) and SIGINT (Ctrl-C)
# reach it directly and it unloads its versions and stops Ray cleanly.
set -euo pipefail

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

model_name="${MODEL_NAME:-model}"
model_base_path="${MODEL_BASE_PATH:-/models}"
model_base_path="${model_base_path%/}"

config_file_given=false
for arg in "$@"; do
  case "$arg" in
    --model_config_file | --model_config_file=*) config_file_given=true ;;
  esac
done

args=(serve)
if [ "$config_file_given" = false ]; then
  args+=("--model_name=${model_name}" "--model_base_path=${model_base_path}/${model_name}")
fi
args+=(--port=8500 --rest_api_port=8501 --rest_api_host=0.0.0.0)
if [ -n "${RAY_ADDRESS:-}" ]; then
  args+=("--address=${RAY_ADDRESS}")
fi

exec aspire "${args[@]}" "$@"
