"""Start a real civitai-daemon process and wait until it serves: shared by tests/conftest.py and bench/."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The start-up line: "civitai-daemon 0.1.0 running: GUI at http://127.0.0.1:8123/gui".
BANNER = re.compile(r"running: GUI at https?://[^\s/]*:(\d+)/gui")


def wait_for(condition, timeout=20.0, interval=0.05, message="condition"):
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def write_config(path, config):
    """config.yaml from a dict: one `key: <JSON>` line each (JSON values are YAML)."""
    Path(path).write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))


def spawn(config_path, cwd, stdout, stderr, env=None, new_session=False):
    """`python launch.py --config PATH` with this interpreter; no CIVITAI_API_TOKEN leaks in from outside."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.pop("CIVITAI_API_TOKEN", None)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(config_path)],
                            cwd=cwd, stdout=stdout, stderr=stderr, env=full_env, start_new_session=new_session)


def banner_port(text):
    """The GUI port from the daemon's start-up line, or None when it is not there (yet)."""
    match = BANNER.search(text)
    return int(match.group(1)) if match else None


def healthy(url, timeout=1.0):
    """Whether GET <url>/healthz answers 200: the watcher, the workers and the database are up."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False
