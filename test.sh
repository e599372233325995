#!/usr/bin/env bash
# Set everything up and run the whole test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")"
python3 install.py --no-start
UV="$(command -v uv || true)"
[ -n "$UV" ] || UV="$HOME/.local/bin/uv"
exec "$UV" run --frozen pytest "$@"
