#!/usr/bin/env bash
# Build the eit-manifold image with docker when a daemon answers, with podman otherwise.
#
#   docker/build.sh [IMAGE]            (IMAGE defaults to eit-manifold; `make image` runs this)
#
# Environment:
#   ENGINE=docker|podman   force an engine (default: docker if `docker info` answers, else podman)
#   BASE_IMAGE=...         base image (default python:3.12-slim). When it can neither be found locally nor
#                          pulled and mmdebstrap is installed, a Debian trixie base (Python 3.13) is
#                          bootstrapped and imported as localhost/eit-manifold-base:trixie.
#   TORCH_INDEX_URL=...    extra index for torch (default: the CPU-wheel index); empty: torch from PyPI.
#                          Unset, it is left empty when the CPU index cannot be reached.
#
# podman on hosts like the project's machines (no Docker daemon, hybrid cgroups, a capped RLIMIT_NOFILE)
# needs three things this script supplies: `--runtime runc` (crun refuses hybrid cgroups), a
# containers.conf with `default_ulimits = []` (else "setrlimit RLIMIT_NOFILE: Operation not
# permitted"), and `--network host` for the build. The host's CA bundle is mounted read-only into the
# build and handed to pip (PIP_CERT), for networks that re-sign TLS.
# Install on Debian: apt-get install podman runc mmdebstrap
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/engine.sh
source docker/engine.sh

IMAGE=${1:-eit-manifold}
BASE_IMAGE=${BASE_IMAGE:-python:3.12-slim}
CPU_INDEX=https://download.pytorch.org/whl/cpu
if [ -z "${TORCH_INDEX_URL+x}" ]; then
  # The CPU index saves ~5 GB; where it cannot be reached, torch comes from PyPI.
  if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=10)" "$CPU_INDEX/" 2>/dev/null; then
    TORCH_INDEX_URL=$CPU_INDEX
  else
    echo "build.sh: $CPU_INDEX cannot be reached: torch from PyPI (CUDA build, larger image)" >&2
    TORCH_INDEX_URL=
  fi
fi

have_image() { "${ENGINE_CMD[@]}" image inspect "$1" > /dev/null 2>&1; }

if ! have_image "$BASE_IMAGE" && ! "${ENGINE_CMD[@]}" pull "$BASE_IMAGE" > /dev/null 2>&1; then
  if ! command -v mmdebstrap > /dev/null; then
    echo "build.sh: base image $BASE_IMAGE cannot be pulled and mmdebstrap is not installed (apt-get install mmdebstrap)" >&2
    exit 2
  fi
  LOCAL_BASE=localhost/eit-manifold-base:trixie
  if ! have_image "$LOCAL_BASE"; then
    echo "build.sh: $BASE_IMAGE cannot be pulled: bootstrapping $LOCAL_BASE with mmdebstrap" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,make,ca-certificates,passwd \
      trixie "$tmp/base.tar"
    "${ENGINE_CMD[@]}" import "$tmp/base.tar" "$LOCAL_BASE" > /dev/null
  fi
  BASE_IMAGE=$LOCAL_BASE
fi

args=(build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE"
      --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
if [ "$ENGINE" = podman ]; then
  args+=(--network host)
  ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$ca" ]; then
    args+=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
fi
echo "build.sh: $ENGINE, base $BASE_IMAGE, torch index '${TORCH_INDEX_URL:-PyPI}'" >&2
start=$(date +%s)
"${ENGINE_CMD[@]}" "${args[@]}" .
echo "build.sh: built $IMAGE in $(( $(date +%s) - start )) s;" \
  "size $("${ENGINE_CMD[@]}" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')" >&2
