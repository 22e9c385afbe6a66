#!/usr/bin/env bash
# The tests scrape real runtimes with a real Prometheus server (Debian's package; it starts no daemon here).
set -euo pipefail
command -v prometheus >/dev/null && exit 0
[ -x /usr/bin/prometheus ] && exit 0
echo "installing Prometheus from Debian's packages" >&2
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
