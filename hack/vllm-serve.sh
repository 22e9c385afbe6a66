#!/usr/bin/env bash
# Runs vLLM from the environment that `make vllm` installs (hack/ensure-vllm.sh), with its CPU settings:
#   hack/vllm-serve.sh MODEL [FLAGS...]       = vllm serve MODEL FLAGS... (the vllm/vllm-openai image's
#                                               entrypoint is ["vllm", "serve"]: a pod's args map here as they are)
#   hack/vllm-serve.sh vllm serve MODEL ...    a pod's whole command line, as written
#   hack/vllm-serve.sh python3 -m vllm.entrypoints.openai.api_server --model MODEL ...   (older images)
# LD_PRELOAD, VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND, VLLM_USE_AOT_COMPILE: set by the launcher
# unless already set. Installs nothing: fails when `make vllm` has not run.
set -euo pipefail
venv=$(bash "$(dirname "$0")/ensure-vllm.sh" --check)
case "${1:-}" in
  vllm | */vllm | python | python3 | python3.* | */python | */python3 | */python3.*) exec "$venv/bin/moe-vllm" "$@" ;;
esac
exec "$venv/bin/moe-vllm-serve" "$@"
