#!/usr/bin/env bash
# Set up civitai-daemon and start it: finds Python >= 3.11, then hands over to
# install.py, which installs uv when missing, runs `uv sync --no-dev` and starts the
# daemon. Every argument goes to install.py, e.g.:
#   ./setup.sh                  set up and start in the foreground
#   ./setup.sh --no-start       set up only
#   sudo ./setup.sh --service   install as a systemd service
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 2; }

python=""
for candidate in python3 python3.14 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [[ -z "$python" ]]; then
    found="$(command -v python3 >/dev/null 2>&1 && python3 --version 2>&1 || echo 'no python3')"
    die "Python >= 3.11 is needed (found: ${found}); install it, e.g. apt-get install python3"
fi
say "Python: $("$python" --version 2>&1) at ${python}"

if command -v uv >/dev/null 2>&1; then
    say "uv: $(uv --version 2>&1) at $(command -v uv)"
elif [[ -x "${HOME:-/nonexistent}/.local/bin/uv" ]]; then
    say "uv: found at ${HOME}/.local/bin/uv (not on PATH; consider adding ~/.local/bin to PATH)"
else
    say "uv: not found; install.py will install it with pip (${python} -m pip install --user uv)"
fi

# Where the GUI will be: config.yaml's host and active_port (top-level lines).
config="config.yaml"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --config) config="${args[i + 1]:-$config}" ;;
        --config=*) config="${args[i]#--config=}" ;;
    esac
done
read_key() {
    [[ -f "$config" ]] || return 0
    sed -n -E "s/^$1:[[:space:]]*['\"]?([^'\"#[:space:]]*).*/\\1/p" "$config" | head -n 1
}
host="$(read_key host)"
port="$(read_key active_port)"
host="${host:-127.0.0.1}"
if [[ "$host" == "0.0.0.0" || "$host" == "::" ]]; then
    host="$(hostname 2>/dev/null || echo localhost)"
fi
if [[ "$port" =~ ^[0-9]+$ ]]; then
    say "GUI: http://${host}:${port}/gui (from ${config})"
else
    say "GUI: on ${host}, port picked at first start (8100-8200) and saved as active_port in ${config}"
fi

exec "$python" install.py "$@"
