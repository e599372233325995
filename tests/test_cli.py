"""The CLI as a real subprocess against a real daemon and the fake Civitai (SPEC §3)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / ".venv" / "bin" / "civitai-daemon"


def cli(*argv, cwd=None, entry=False, timeout=60):
    """Run the CLI; returns CompletedProcess with text stdout/stderr."""
    command = [str(ENTRY)] if entry else [sys.executable, "-m", "daemon.cli"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CIVITAI_API_TOKEN", None)
    return subprocess.run(command + [str(a) for a in argv], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def ok(*argv, **kwargs):
    result = cli(*argv, **kwargs)
    assert result.returncode == 0, (argv, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def js(*argv, **kwargs):
    return json.loads(ok(*argv, "--json", **kwargs).stdout)


def fails(code, *argv, **kwargs):
    result = cli(*argv, **kwargs)
    assert result.returncode == code, (argv, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip(), "a failure must say why on stderr"
    return result


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def state_of(config, download_id):
    items = js("list", "--config", config, "--limit", 1000)["items"]
    return next(d for d in items if d["id"] == download_id)


def wait_cli_state(config, download_id, states, timeout=30):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (d := state_of(config, download_id))["state"] in states and d, timeout, 0.2,
                    f"download {download_id} in {states}")


def test_commands_end_to_end(make_daemon, fake, tmp_path):
    daemon = make_daemon()
    config = daemon.config_path

    # status: human and JSON, --config before and after the subcommand, entry point script too
    human = ok("--config", config, "status").stdout
    for state in ("queued", "downloading", "paused", "completed", "failed", "cancelled"):
        assert state in human
    assert "no active downloads" in human
    status = js("status", "--config", config)
    assert set(status["counts"]) >= {"queued", "completed"} and isinstance(status["active"], list)
    assert js("--config", config, "status")["version"] == status["version"]
    if ENTRY.exists():
        assert "completed" in ok("status", "--config", config, entry=True, cwd=tmp_path).stdout
    # a relative --config from another working directory
    assert ok("status", "--config", os.path.relpath(config, tmp_path), cwd=tmp_path).stdout

    listing = js("list", "--config", config)
    assert listing["items"] == [] and listing["total"] == 0
    assert "no downloads" in ok("list", "--config", config).stdout

    # add by URL: prints the new id, then poll list --json until completed
    blob = fake.add_blob("cli-file.safetensors", size=300_000)
    added = ok("add", blob["url"], "--config", config, "--sha256", blob["sha256"], "--priority", 3)
    download_id = int(added.stdout.strip())
    done = wait_cli_state(config, download_id, {"completed", "failed"})
    assert done["state"] == "completed", done
    assert done["sha256"] == blob["sha256"] and done["priority"] == 3

    # add by version id (JSON output) with --filename and --subdir
    fake.add_model(4201, "Cli Model", "LORA")
    fake.add_version(4201, 130072, "v1.0", size=200_000)
    version_id = js("--config", config, "add", "130072", "--filename", "renamed.safetensors",
                    "--subdir", "cli/sub")["id"]
    version = wait_cli_state(config, version_id, {"completed", "failed"})
    assert version["state"] == "completed", version
    assert version["filename"] == "renamed.safetensors" and version["modelVersionId"] == 130072
    assert Path(version["path"]).parts[-3:] == ("cli", "sub", "renamed.safetensors")

    # human list: aligned table with id, state, size, file, model
    lines = ok("list", "--config", config).stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "SIZE", "FILE"]
    row = next(line for line in lines if line.split()[0] == str(download_id))
    assert "completed" in row and "cli-file.safetensors" in row and "300.0 kB" in row
    row = next(line for line in lines if line.split()[0] == str(version_id))
    assert "renamed.safetensors" in row and "Cli Model" in row and "130072" in row
    assert lines[1].index("completed") == lines[2].index("completed")  # columns line up

    # --state and --limit
    completed = js("list", "--state", "completed", "--limit", 1, "--config", config)
    assert len(completed["items"]) == 1 and completed["total"] == 2 and completed["items"][0]["id"] == version_id
    assert "1 of 2 shown" in ok("list", "--state", "completed", "--limit", 1, "--config", config).stdout
    assert js("list", "--state", "failed", "--config", config)["items"] == []
    # an unknown state: the daemon's own list in the message, exit 2
    wrong = fails(2, "list", "--state", "finished", "--config", config)
    assert "queued, downloading, paused, completed, failed, cancelled" in wrong.stderr

    # check-updates: a newer version of the downloaded model is reported
    fake.add_version(4201, 130073, "v2.0", size=100_000)
    summary = ok("check-updates", "--config", config).stdout
    assert "checked 1 model(s)" in summary and "1 update(s)" in summary and "130073" in summary
    assert js("check-updates", "--config", config)["checked"] == 1

    # the daemon stopped: exit 2 and one clear line saying how to start it
    daemon.stop()
    for argv in (["status"], ["list"], ["add", blob["url"]], ["pause", "1"], ["check-updates"]):
        line = one_line(fails(2, *argv, "--config", config))
        assert line == (f"civitai-daemon is not running at http://127.0.0.1:{daemon.port} "
                        f"(start it with: uv run civitai-daemon run --config {config})")


def test_queue_actions_and_errors(make_daemon, fake):
    daemon = make_daemon(workers=1)
    config = daemon.config_path
    fake.faults.rate = 100_000  # 5 MB at 100 kB/s: stays in flight for the whole test
    blob = fake.add_blob("slow.bin", size=5_000_000)
    download_id = int(ok("add", blob["url"], "--config", config).stdout)
    running = wait_cli_state(config, download_id, "downloading")
    assert running["filename"] == "slow.bin"
    wait_for(lambda: js("status", "--config", config)["active"], 10, 0.2, "an active download")

    # status shows the active download with file, progress, speed and ETA
    lines = ok("status", "--config", config).stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ID"))
    assert lines[header].split() == ["ID", "FILE", "PROGRESS", "SIZE", "SPEED", "ETA"]
    active = lines[header + 1]
    assert active.split()[0] == str(download_id) and "slow.bin" in active and "%" in active
    assert "/s" in active and ":" in active
    assert "downloading" in ok("list", "--state", "downloading", "--config", config).stdout

    paused = ok("pause", download_id, "--config", config)
    assert paused.stdout.strip().startswith(f"download {download_id} paused")
    wait_cli_state(config, download_id, "paused", timeout=10)
    # an action the state does not allow: 409 → exit 1 with the daemon's message
    assert "cannot pause" in one_line(fails(1, "pause", download_id, "--config", config))
    assert "cannot retry" in one_line(fails(1, "retry", download_id, "--config", config))

    resumed = js("resume", download_id, "--config", config)
    assert resumed["id"] == download_id and resumed["state"] in ("queued", "downloading")
    wait_cli_state(config, download_id, "downloading", timeout=10)
    assert "cancelled" in ok("--config", config, "cancel", download_id).stdout
    assert state_of(config, download_id)["state"] == "cancelled"
    assert "cannot resume" in one_line(fails(1, "resume", download_id, "--config", config))
    retried = ok("retry", download_id, "--config", config).stdout
    assert retried.startswith(f"download {download_id} queued") or "downloading" in retried
    ok("cancel", download_id, "--config", config)

    # unknown id → 404 → exit 1 with the message
    for action in ("cancel", "pause", "resume", "retry"):
        assert "no download with id 99999" in one_line(fails(1, action, 99999, "--config", config))
    # the daemon refuses a bad item → 400 → exit 1
    assert "sha256" in one_line(fails(1, "add", blob["url"], "--sha256", "xyz", "--config", config))
    assert "air" in one_line(fails(1, "add", "urn:air:nonsense", "--config", config))
    assert "limit" in one_line(fails(1, "list", "--limit", 0, "--config", config))

    # bad usage → exit 2
    fails(2, "pause", "abc", "--config", config)
    fails(2, "pause", "--config", config)
    fails(2, "list", "--state", "bogus", "--config", config)
    fails(2, "list", "--limit", "many", "--config", config)
    fails(2, "add", "--config", config)
    fails(2, "frobnicate", "--config", config)


def test_api_token_from_config(make_daemon, fake, tmp_path):
    daemon = make_daemon(api_token="cli-secret-token")
    config = daemon.config_path
    assert js("status", "--config", config)["counts"]["queued"] == 0
    blob = fake.add_blob("token.bin", size=10_000)
    download_id = int(ok("add", blob["url"], "--config", config).stdout)
    assert wait_cli_state(config, download_id, {"completed", "failed"})["state"] == "completed"

    # the same daemon through a config without the token, or with a wrong one: exit 2, one line
    text = config.read_text()
    assert "cli-secret-token" in text
    no_token = tmp_path / "no-token.yaml"
    no_token.write_text("\n".join(line for line in text.splitlines() if not line.startswith("api_token")) + "\n")
    line = one_line(fails(2, "status", "--config", no_token))
    assert line == f"civitai-daemon: the daemon needs api_token: set it in {no_token}"
    wrong = tmp_path / "wrong-token.yaml"
    wrong.write_text(text.replace("cli-secret-token", "not-the-token"))
    assert "api_token" in one_line(fails(2, "list", "--config", wrong))
    assert "not-the-token" not in (r := cli("list", "--config", wrong)).stdout + r.stderr


def test_config_problems_exit_2(tmp_path):
    # never started: active_port is still null
    fresh = tmp_path / "fresh" / "config.yaml"
    fresh.parent.mkdir()
    fresh.write_text("workers: 1\n")
    line = one_line(fails(2, "status", "--config", fresh))
    assert "not running" in line and f"--config {fresh}" in line
    # nobody listens on the port
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stale = tmp_path / "stale.yaml"
    stale.write_text(f"host: 0.0.0.0\nactive_port: {port}\n")
    line = one_line(fails(2, "list", "--config", stale))
    assert line.startswith(f"civitai-daemon is not running at http://127.0.0.1:{port} ")
    # a bad config names the key
    bad = tmp_path / "bad.yaml"
    bad.write_text("wokers: 2\n")
    assert "wokers" in one_line(fails(2, "status", "--config", bad))
    bad.write_text("active_port: [1\n")
    assert "YAML" in one_line(fails(2, "status", "--config", bad))
    # a missing config is reported, not created
    missing = tmp_path / "nowhere" / "config.yaml"
    assert "no config" in one_line(fails(2, "status", "--config", missing))
    assert not missing.exists()


def test_retry_failed_requeues_every_failed_download(make_daemon, fake):
    """Issue 11 note: after an outage one command (and one API call) retries every failed row."""
    daemon = make_daemon(retries=0)
    config = daemon.config_path
    blobs = [fake.add_blob(f"outage{i}.bin", size=5000) for i in range(3)]
    fake.faults.status_5xx = -1  # the outage
    ids = [daemon.post("/api/download", {"url": b["url"], "sha256": b["sha256"]}).json()["id"] for b in blobs]
    for download_id in ids:
        daemon.wait_state(download_id, "failed")
    fake.faults.status_5xx = 0  # it is over
    assert "3 failed download(s) queued again" in ok("retry-failed", "--config", config).stdout
    for download_id in ids:
        assert daemon.wait_state(download_id, {"completed", "failed"})["state"] == "completed"
    assert js("retry-failed", "--config", config) == {"ids": [], "count": 0}
    assert "no failed downloads" in ok("retry-failed", "--config", config).stdout
