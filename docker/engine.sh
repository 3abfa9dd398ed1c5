# Sourced by docker/build.sh and docker/smoke_test.sh: picks the container engine.
# Sets ENGINE (docker|podman) and the array ENGINE_CMD (the command with the flags this host needs).
if [ -z "${ENGINE:-}" ]; then
  if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman > /dev/null; then
    ENGINE=podman
  else
    echo "no container engine: no Docker daemon answers and podman is not installed (apt-get install podman runc)" >&2
    exit 2
  fi
fi
ENGINE_CMD=("$ENGINE")
if [ "$ENGINE" = podman ]; then
  # crun refuses hybrid (v1) cgroup hierarchies; runc handles both.
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && command -v runc > /dev/null; then
    ENGINE_CMD+=(--runtime runc)
  fi
  # Podman's default ulimits (RLIMIT_NOFILE 1048576) exceed what unprivileged hosts allow; keep the host's.
  # One fixed per-user file (rewritten each time) rather than a temporary that no trap could remove:
  # the scripts sourcing this set EXIT traps of their own.
  if [ -z "${CONTAINERS_CONF:-}" ] && [ ! -f /etc/containers/containers.conf ]; then
    CONTAINERS_CONF="${XDG_CACHE_HOME:-$HOME/.cache}/eit-manifold/containers.conf"
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
    export CONTAINERS_CONF
  fi
fi
