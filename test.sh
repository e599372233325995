#!/usr/bin/env bash
# Set everything up and run the whole test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")"
python3 install.py --no-start
exec uv run --frozen pytest "$@"
