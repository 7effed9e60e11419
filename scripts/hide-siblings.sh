#!/usr/bin/env bash
# Run a command with every sibling of the checkout hidden, so that anything reading outside the
# repository (a ../shared folder, a neighbouring clone) fails as it would on a user's machine.
#   scripts/hide-siblings.sh make test          (.ci/run does exactly this)
# In a private mount namespace (unshare, as root) each sibling directory gets an empty tmpfs over
# it and each sibling file /dev/null; the interpreter's own prefix is never hidden. The tmpfs is
# writable: a checkout inside /tmp has pytest's and Ray's temp folders as siblings, and those must
# start empty, not refuse writes.
# Without unshare it says so and runs the command unisolated.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
parent=$(dirname "$repo")

if [[ ${DISTILL_SIBLINGS_HIDDEN:-} != 1 ]]; then
  if [[ $(id -u) -eq 0 ]] && unshare --mount --propagation private true 2>/dev/null; then
    exec env DISTILL_SIBLINGS_HIDDEN=1 unshare --mount --propagation private "$0" "$@"
  fi
  echo "hide-siblings: no mount namespace here (needs root and unshare); running unisolated" >&2
  exec "$@"
fi

# Keep the Python that builds the venv reachable even when it lives beside the checkout.
keep=()
for py in python3.11 python3; do
  command -v "$py" >/dev/null && keep+=("$(realpath "$("$py" -c 'import sys; print(sys.base_prefix)')")")
  command -v "$py" >/dev/null && keep+=("$(dirname "$(realpath "$(command -v "$py")")")")
done
shopt -s dotglob nullglob
hidden=()
for entry in "$parent"/*; do
  [[ $entry -ef $repo ]] && continue
  for path in "${keep[@]}"; do [[ $path == "$entry" || $path == "$entry"/* ]] && continue 2; done
  if [[ -d $entry && ! -L $entry ]]; then
    mount -t tmpfs -o mode=1777 tmpfs "$entry"
  elif [[ -f $entry && ! -L $entry ]]; then
    mount --bind /dev/null "$entry"
  else
    continue
  fi
  hidden+=("$(basename "$entry")")
done
echo "hide-siblings: hidden beside the checkout: ${hidden[*]:-(nothing)}"
exec "$@"
