#!/usr/bin/env bash
# Packs what a bare GPU machine needs to run `bash .ci/gpu-check`: this
# machine's Deno binary, xz-compressed (about 28 MB of its 92) into the
# ignored folder .device/, and node_modules/ filled, so that nothing is
# downloaded there. Carry .device and node_modules with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v deno >/dev/null 2>&1 || { echo "Deno is not installed here." >&2; exit 1; }
command -v xz >/dev/null 2>&1 || { echo "xz is not installed here (apt-get install xz-utils)." >&2; exit 1; }
deno install --quiet   # fills node_modules/ from deno.json and deno.lock
mkdir -p .device
if [[ ! -f .device/deno.xz || "$(command -v deno)" -nt .device/deno.xz ]]; then
  xz -T0 -9 -c "$(readlink -f "$(command -v deno)")" > .device/deno.xz.tmp
  mv .device/deno.xz.tmp .device/deno.xz
fi
du -sh .device/deno.xz node_modules
echo "On the GPU machine, with .device and node_modules carried: OUT=<folder> bash .ci/gpu-check"
