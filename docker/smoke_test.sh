#!/usr/bin/env bash
# Smoke test of a built image (`make image-test`): the CLI, the quick-start demo (timed), a two-process
# MPI reconstruction written to a mounted directory owned by the calling user and compared with a serial
# run outside the container, and the KTC2023 pipeline on the vendored files.
#
#   docker/smoke_test.sh [IMAGE]       (IMAGE defaults to eit-manifold; needs the host's .venv: make setup)
#
# Exits non-zero on the first failed check. The work directory (results/image-test/) is kept for
# inspection and replaced by the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/engine.sh
source docker/engine.sh
IMAGE=${1:-eit-manifold}
HOST_CLI=.venv/bin/eit-manifold
[ -x "$HOST_CLI" ] || { echo "smoke_test.sh: $HOST_CLI missing (run make setup)" >&2; exit 2; }
"${ENGINE_CMD[@]}" image inspect "$IMAGE" > /dev/null 2>&1 \
  || { echo "smoke_test.sh: image $IMAGE not found (run make image)" >&2; exit 2; }

WORK=$PWD/results/image-test
rm -rf "$WORK"
mkdir -p "$WORK"
# The mounted directory belongs to the calling user, and the container writes as that user. Root has no
# unprivileged uid of its own: then the directory is handed to the image's user (uid 1000), which must
# not be root either.
if [ "$(id -u)" = 0 ]; then
  chown 1000:1000 "$WORK"
  OWNER=1000
  USER_ARGS=()
elif [ "$ENGINE" = podman ]; then
  OWNER=$(id -u)
  USER_ARGS=(--userns=keep-id)
else
  OWNER=$(id -u)
  USER_ARGS=(-u "$(id -u):$(id -g)")
fi
run() { "${ENGINE_CMD[@]}" run --rm "${USER_ARGS[@]}" -v "$WORK:/data" "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "eit-manifold --help"
help=$(run "$IMAGE" --help)
echo "$help" | sed -n 2,4p
run --entrypoint id "$IMAGE" -u | grep -qvx 0 || { echo "FAIL: the container runs as root" >&2; exit 1; }

step "quick-start demo (timed)"
start=$(date +%s%N)
run "$IMAGE" demo --seed 0 --out /data/demo
demo_s=$(( ($(date +%s%N) - start) / 1000000000 ))
echo "demo wall time inside the container: $demo_s s"

step "simulate inside, then mpirun -n 2 reconstruct into a new directory on the mount"
run "$IMAGE" simulate --phantom balls --seed 3 --noise 0.01 --out /data/data.npz --plot /data/data.png
run --entrypoint mpirun "$IMAGE" -n 2 eit-manifold reconstruct --data /data/data.npz --out /data/rec-mpi
step "the same reconstruction outside (serial, host .venv), compared"
"$HOST_CLI" reconstruct --data "$WORK/data.npz" --out "$WORK/rec-host" > /dev/null
.venv/bin/python - "$WORK" <<'EOF'
import sys
from pathlib import Path

import numpy as np

work = Path(sys.argv[1])
inside = np.load(work / "rec-mpi" / "conductivity.npy")
outside = np.load(work / "rec-host" / "conductivity.npy")
ok = np.isfinite(outside)
if not np.array_equal(ok, np.isfinite(inside)):
    sys.exit("FAIL: the two reconstructions differ in where they are defined")
rel = np.linalg.norm(inside[ok] - outside[ok]) / np.linalg.norm(outside[ok])
print(f"mpirun -n 2 inside vs serial outside: relative difference {rel:.2e} (target <= 1e-8)")
sys.exit(0 if rel <= 1e-8 else "FAIL: relative difference above 1e-8")
EOF

step "owner and modes of what the container wrote"
bad=$(find "$WORK/demo" "$WORK/rec-mpi" "$WORK/data.npz" "$WORK/data.png" \( ! -uid "$OWNER" -o -type f ! -perm -0044 \) -print)
[ -z "$bad" ] || { echo "FAIL: not owned by uid $OWNER or not group/other-readable: $bad" >&2; exit 1; }
find "$WORK/rec-mpi" -type f -printf '%M %u %p\n' | sed "s#$WORK/##"

step "eit-manifold ktc on the vendored KTC2023 files"
run "$IMAGE" ktc /app/datasets/ktc2023 --truth /app/datasets/ktc2023 --out /data/ktc
ls "$WORK/ktc"

printf '\nimage-test passed (demo %s s)\n' "$demo_s"
