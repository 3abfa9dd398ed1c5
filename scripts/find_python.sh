#!/usr/bin/env bash
# Print the path of a Python interpreter >= 3.12 (3.12 preferred: the dolfinx wheels are built for it): on PATH first, then through pyenv.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
for cand in python3.12 python3.13 python3 python; do
  if p=$(command -v "$cand" 2>/dev/null) && ok "$p"; then echo "$p"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.|$)' | sort -V); do
    p="$root/versions/$v/bin/python"
    if [ -x "$p" ] && ok "$p"; then echo "$p"; exit 0; fi
  done
fi
echo "error: no Python >= 3.12 found on PATH or through pyenv; install one (e.g. 'pyenv install 3.12')" >&2
exit 1
