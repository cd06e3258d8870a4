#!/usr/bin/env bash
# Builds pgsidecar's image here, where no registry can be reached: the Debian base from
# scripts/docker-bases.sh, and the binary compiled on the host (the Dockerfile's `prebuilt`
# target) with its debug info removed. Prints the image's name and size.
#
#   scripts/docker-image.sh [tag]                 release binary, tag pgsidecar:local
#   PGSIDECAR_BINARY=target/debug/pgsidecar scripts/docker-image.sh pgsidecar:test
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-pgsidecar:local}
base=$(bash scripts/docker-bases.sh)
binary=${PGSIDECAR_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet --bin pgsidecar
  binary=target/release/pgsidecar
fi
mkdir -p target/docker
objcopy --strip-debug "$binary" target/docker/pgsidecar.tmp
mv target/docker/pgsidecar.tmp target/docker/pgsidecar
docker build --quiet --target prebuilt --build-arg RUNTIME_BASE="$base" -t "$TAG" . >/dev/null
echo "$TAG $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}')"
