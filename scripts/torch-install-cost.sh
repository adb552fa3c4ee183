#!/usr/bin/env bash
# What `bash scripts/setup.sh --with-torch` adds on Debian/Ubuntu beyond `bash scripts/setup.sh`:
# apt's own plan (a simulation, as on a machine with nothing installed, with Recommends as
# setup.sh installs them) for the base packages plus python3-torch, minus its plan for the base
# packages alone; then the total download size and installed size of those packages from their
# apt records. Nothing is installed or downloaded. Prints one summary line.
set -euo pipefail
base=(build-essential python3 pkg-config libopenblas-openmp-dev clang-format)
empty=$(mktemp)
trap 'rm -f "$empty"' EXIT
plan() {
  apt-get -s -o Dir::State::status="$empty" install "$@" 2>/dev/null | awk '/^Inst / { print $2 }' | sort -u
}
extra=$(comm -13 <(plan "${base[@]}") <(plan "${base[@]}" python3-torch))
# One apt-cache call for every package; the candidate version's record of each.
apt-cache show --no-all-versions $extra 2>/dev/null | awk '
  /^Package:/ { n++ }
  /^Size:/ { dl += $2 }
  /^Installed-Size:/ { inst += $2 }
  END { printf "python3-torch adds %d packages: %d MB to download, %d MB installed\n", n, dl / 1e6, inst / 1024 }'
