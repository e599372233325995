"""config.yaml at start: validation, defaults, active_port write-back (SPEC §4)."""
import signal
import socket
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from conftest import ROOT, DaemonProcess


def run_and_fail(daemon, timeout=20):
    """Start a daemon that must refuse to run; returns (exit code, stderr lines)."""
    daemon.start(wait=False)
    code = daemon.proc.wait(timeout)
    daemon.proc.stdout.close()
    lines = [line for line in daemon.read_stderr().splitlines() if line.strip()]
    return code, lines


# Every validator is unit-tested in test_manifest.py; these check the process's exit and message.
@pytest.mark.parametrize("extra, key", [
    ("colour: blue\n", "colour"),
    ("workers: two\n", "workers"),
    ("update_check:\n  tme: \"04:00\"\n", "update_check.tme"),
    ("update_check:\n  time: 4\n", "update_check.time"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, extra, key):
    daemon = DaemonProcess(tmp_path, {})
    daemon.config_path.write_text(f"# mine\nlog_level: INFO\n{extra}")
    code, lines = run_and_fail(daemon)
    assert code == 2
    assert len(lines) == 1, lines
    assert key in lines[0]
    assert "Traceback" not in daemon.read_stderr()


def test_missing_config_is_created_with_commented_defaults(tmp_path):
    home = tmp_path / "fresh"
    home.mkdir()
    config = home / "sub" / "config.yaml"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(config)], cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        assert "running" in line, line
        text = config.read_text()
        data = YAML().load(text)
        assert text.count("\n# ") >= 10  # every setting carries its help line
        assert data["workers"] == 2 and data["retries"] == 5 and data["timeout"] == 30
        assert data["inbox_dir"] == "inbox" and data["throttle"] == 0
        assert data["update_check"]["time"] == "04:00"
        assert 8100 <= data["active_port"] <= 8200
        assert f":{data['active_port']}/" in line
        for folder in ("inbox", "processing", "done", "failed", "downloads", "logs"):
            assert (config.parent / folder).is_dir(), folder  # relative to the config's folder
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        proc.stdout.close()


def test_null_active_port_is_written_back_keeping_comments(make_daemon):
    daemon = make_daemon(start=False)
    text = ("# my daemon, my comments\n"
            "workers: 1  # one at a time\n"
            "\n"
            "# pick a port for me\n"
            "active_port: null\n"
            f"civitai_base_url: {daemon.config['civitai_base_url']}\n"
            "log_level: DEBUG  # noisy\n")
    daemon.config_path.write_text(text)
    daemon.start()
    assert 8100 <= daemon.port <= 8200 and daemon.port != 8000
    written = daemon.config_path.read_text()
    assert written == text.replace("active_port: null", f"active_port: {daemon.port}")
    assert daemon.get("/api/status").json()["workers"] == 1
    # The next start uses the written port.
    assert daemon.stop() == 0
    daemon.start()
    assert f":{daemon.port}" in daemon.url and f"active_port: {daemon.port}" in written


def test_taken_port_exits_2_with_a_helpful_message(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        daemon = DaemonProcess(tmp_path, {"active_port": port, "update_check": {"enabled": False}})
        code, lines = run_and_fail(daemon)
    finally:
        holder.close()
    assert code == 2
    assert len(lines) == 1, lines
    assert str(port) in lines[0] and "taken" in lines[0] and "active_port" in lines[0]


def test_second_daemon_on_the_same_config_is_refused(make_daemon):
    daemon = make_daemon()
    second = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(daemon.config_path)],
                            cwd=daemon.home, capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(daemon.port) in lines[0], lines
    assert daemon.get("/api/status").status_code == 200
