#!/usr/bin/env bash
# Sets up attnres on a Debian/Ubuntu machine: system packages for the native addon (compiler,
# pkg-config, OpenBLAS with OpenMP, clang-format for the format check, chromium for the browser
# tests of `attnres view`, strace for the crash tests), then `npm ci`, which builds the addon and the
# viewer's front end. Needs Node.js >= 20. Uses sudo when not root. Safe to re-run.
# --with-torch also installs Debian's python3-torch (the torch engine, `--engine torch`).
set -euo pipefail
with_torch=0
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
    *) echo "usage: bash scripts/setup.sh [--with-torch]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "attnres needs Node.js >= 20 (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

need=()
for p in build-essential python3 pkg-config libopenblas-openmp-dev clang-format chromium fonts-dejavu-core strace; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "$with_torch" -eq 1 ]; then dpkg -s python3-torch >/dev/null 2>&1 || need+=(python3-torch); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Build against the system's Node headers when they are there (no header download).
if [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi
npm ci --no-audit --no-fund
