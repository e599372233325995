#!/usr/bin/env bash
# Set everything up and run the whole test suite (the README's second command; CI runs it too).
set -euo pipefail
cd "$(dirname "$0")"

# Browser tests need Debian's chromium; the service test needs systemd-analyze.
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "test.sh: ${need_apt[*]} missing; browser/service tests will be skipped (run as root to install)"
  fi
fi

python3 install.py --no-start
UV="$(command -v uv || true)"
[ -n "$UV" ] || UV="$HOME/.local/bin/uv"
exec "$UV" run --frozen pytest "$@"
