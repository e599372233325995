"""install.py, setup.sh, the systemd unit template and daemon.sdnotify."""

from __future__ import annotations

import configparser
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon import sdnotify

ROOT = Path(__file__).resolve().parent.parent
UNIT = "civitai-daemon.service"
# The interpreter the venv was made from: install.py runs before any venv exists.
SYSTEM_PYTHON = getattr(sys, "_base_executable", None) or sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "CIVITAI_INSTALL_FAKE_EUID",
                 "CIVITAI_INSTALL_SYSTEMCTL", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_install(checkout: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, str(checkout / "install.py"), *args],
        cwd=checkout, env=env or clean_env(), capture_output=True, text=True, timeout=timeout,
    )


def project_files() -> list[str]:
    """The checkout's files: tracked ones plus untracked ones git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return [name for name in listing.split("\0") if name and not name.startswith(".venv/")]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `path` with its size and mtime, to prove nothing changed."""
    found = {}
    for item in path.rglob("*"):
        info = item.lstat()
        found[str(item.relative_to(path))] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project without .venv, in a path with a space and a `%`."""
    copy = tmp_path_factory.mktemp("install") / "civitai daemon 100%"
    for name in project_files():
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture(scope="module")
def synced(checkout: Path) -> Path:
    """The copy after `install.py --no-start`."""
    result = run_install(checkout, "--no-start")
    assert result.returncode == 0, result.stdout + result.stderr
    return checkout


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> tuple[str, Path]:
    """A `systemctl` stand-in that records its arguments, one call a line."""
    log = tmp_path / "systemctl.log"
    script = tmp_path / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    script.chmod(0o755)
    return str(script), log


def load_install_module():
    spec = importlib.util.spec_from_file_location("install_script", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit_settings(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("systemd-analyze is missing (CI is set): install systemd")
    pytest.skip("systemd-analyze is not installed")


def verify_unit(text: str, folder: Path) -> None:
    """`systemd-analyze verify` is silent and succeeds (it warns on stderr with rc 0, so check both)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / UNIT
    path.write_text(text)
    result = subprocess.run([systemd_analyze(), "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_no_start_sets_up_a_fresh_copy(checkout: Path) -> None:
    assert not (checkout / ".venv").exists()
    result = run_install(checkout, "--no-start")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (checkout / ".venv" / "bin" / "python").exists()
    assert "uv found" in result.stdout or "installing it" in result.stdout
    assert "uv sync --frozen --no-dev" in result.stdout


def test_no_start_installs_the_runtime_without_test_tools(synced: Path) -> None:
    """A user's daemon carries its runtime dependencies and none of the dev group."""
    python = synced / ".venv" / "bin" / "python"
    probe = ("import importlib.util, sys; names = sys.argv[1:]; "
             "print(' '.join(n for n in names if importlib.util.find_spec(n)))")
    runtime = ["bottle", "gevent", "peewee", "watchdog", "requests", "daemon"]
    dev = ["pytest", "playwright", "schemathesis", "hypothesis", "websocket"]
    found = subprocess.run([str(python), "-c", probe, *runtime, *dev], cwd=synced, env=clean_env(),
                           capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert found == runtime


def test_ci_run_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], check=True)


def test_setup_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "setup.sh")], check=True)


def test_setup_sh_runs_install_py(synced: Path) -> None:
    result = subprocess.run(
        ["bash", str(synced / "setup.sh"), "--no-start"],
        cwd="/", env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> Python: Python 3." in result.stdout
    assert "==> uv:" in result.stdout
    assert "==> GUI:" in result.stdout
    assert "set-up done" in result.stdout


def test_printed_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    assert (ROOT / ".venv" / "bin" / "python").exists()
    result = run_install(ROOT, "--print-service")
    assert result.returncode == 0, result.stderr
    verify_unit(result.stdout, tmp_path)
    service = unit_settings(result.stdout)["Service"]
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WorkingDirectory": str(ROOT),
        "ExecStart": f"{ROOT}/.venv/bin/python {ROOT}/launch.py --config {ROOT}/config.yaml",
        "Restart": "on-failure", "RestartSec": "5", "WatchdogSec": "30", "TimeoutStopSec": "20",
        "KillSignal": "SIGTERM", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "PrivateTmp": "yes", "StandardOutput": "journal", "StandardError": "journal",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["ReadWritePaths"] == str(ROOT)
    assert unit_settings(result.stdout)["Install"]["WantedBy"] == "multi-user.target"


def test_unit_quotes_odd_paths_and_lists_outside_folders(synced: Path, tmp_path: Path) -> None:
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    models = tmp_path / "models dir"
    config.write_text(
        "# a comment\n"
        f'download_dir: "{models}"   # outside the config folder\n'
        "database: 'db/it''s.db'\n"
        "inbox_dir: inbox\n"
        "active_port: null\n"
    )
    result = run_install(synced, "--print-service", "--config", str(config))
    assert result.returncode == 0, result.stderr
    verify_unit(result.stdout, tmp_path / "unit")
    service = unit_settings(result.stdout)["Service"]
    root = str(synced).replace("%", "%%")
    assert service["ExecStart"] == (
        f'"{root}/.venv/bin/python" "{root}/launch.py" --config {str(config).replace("%", "%%")}'
    )
    assert service["WorkingDirectory"] == root
    assert service["ReadWritePaths"] == f'{config.parent} "{models}"'


def test_config_reader_and_protect_home() -> None:
    install = load_install_module()
    assert install._scalar("'a''b' # c") == "a'b"
    assert install._scalar('"C:\\\\x y" # c') == "C:\\x y"
    assert install._scalar("downloads  # where") == "downloads"
    assert install._scalar("null") is None and install._scalar("~") is None and install._scalar("") is None
    assert install.protect_home([Path("/home/ann/civitai")], []) == "no"
    assert install.protect_home([Path("/srv/civitai"), Path("/root/models")], []) == "no"
    assert install.protect_home([Path("/srv/civitai")], [Path("/root/.pyenv/bin/python3")]) == "read-only"
    assert install.protect_home([Path("/srv/civitai")], [Path("/usr/bin/python3")]) == "yes"
    assert install.protect_home([Path("/homestead")], []) == "yes"


@pytest.mark.parametrize("flag", ["--service", "--uninstall-service"])
def test_service_flags_need_root(flag: str, checkout: Path, tmp_path: Path, fake_systemctl) -> None:
    systemctl, log = fake_systemctl
    units = tmp_path / "units"
    units.mkdir()
    before = tree(checkout)
    env = clean_env(CIVITAI_INSTALL_FAKE_EUID="1000", CIVITAI_INSTALL_SYSTEMCTL=systemctl)
    result = run_install(checkout, flag, "--unit-dir", str(units), "--systemd-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert result.stderr == f"install.py: {flag} needs root; run: sudo python3 install.py {flag}\n"
    assert list(units.iterdir()) == [] and not log.exists()
    assert tree(checkout) == before


def test_service_needs_root_for_real(tmp_path: Path) -> None:
    """The same refusal from a real unprivileged process (nobody), when we can switch to it."""
    setpriv = shutil.which("setpriv")
    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not setpriv or not os.access(python, os.X_OK):
        pytest.skip("needs root, setpriv and /usr/bin/python3")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python]
    if subprocess.run([*drop, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"]).returncode:
        pytest.skip("/usr/bin/python3 is older than 3.11")
    # A checkout in a private folder (mktemp -d, a home directory) is unreadable for nobody:
    # run a world-readable copy of the project's files instead.
    public = Path(tempfile.mkdtemp(prefix="civitai-install-"))
    try:
        public.chmod(0o755)
        for name in ("install.py", "config.yaml", "launch.py"):
            shutil.copy(ROOT / name, public / name)
        shutil.copytree(ROOT / "systemd", public / "systemd")
        for path in public.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        result = subprocess.run([*drop, str(public / "install.py"), "--service", "--unit-dir", str(tmp_path)],
                                env=clean_env(), capture_output=True, text=True, timeout=60, cwd=public)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert result.returncode == 2
    assert "needs root" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--service", "--uninstall-service"])
def test_service_flags_need_systemd(flag: str, checkout: Path, tmp_path: Path, fake_systemctl) -> None:
    systemctl, log = fake_systemctl
    units = tmp_path / "units"
    units.mkdir()
    before = tree(checkout)
    env = clean_env(CIVITAI_INSTALL_FAKE_EUID="0", CIVITAI_INSTALL_SYSTEMCTL=systemctl)
    result = run_install(checkout, flag, "--unit-dir", str(units),
                         "--systemd-dir", str(tmp_path / "no-systemd"), env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "needs a host running systemd" in result.stderr
    assert list(units.iterdir()) == [] and not log.exists()
    assert tree(checkout) == before


def test_service_refuses_an_unknown_user(checkout: Path, tmp_path: Path, fake_systemctl) -> None:
    systemctl, log = fake_systemctl
    before = tree(checkout)
    env = clean_env(CIVITAI_INSTALL_FAKE_EUID="0", CIVITAI_INSTALL_SYSTEMCTL=systemctl)
    result = run_install(checkout, "--service", "--user", "no-such-user-civitai", "--unit-dir", str(tmp_path),
                         "--systemd-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "no such user: 'no-such-user-civitai'" in result.stderr
    assert not (tmp_path / UNIT).exists() and not log.exists()
    assert tree(checkout) == before


def test_service_installs_and_uninstalls(synced: Path, tmp_path: Path, fake_systemctl) -> None:
    systemctl, log = fake_systemctl
    units = tmp_path / "units"
    units.mkdir()
    user = pwd.getpwuid(os.geteuid()).pw_name
    env = clean_env(CIVITAI_INSTALL_FAKE_EUID="0", CIVITAI_INSTALL_SYSTEMCTL=systemctl)
    where = ["--unit-dir", str(units), "--systemd-dir", str(tmp_path), "--user", user]

    result = run_install(synced, "--service", *where, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    installed = units / UNIT
    assert installed.read_text() == run_install(synced, "--print-service", "--user", user).stdout
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert log.read_text().splitlines() == ["daemon-reload", f"enable {UNIT}", f"start {UNIT}"]
    assert "systemctl status civitai-daemon" in result.stdout
    assert "journalctl -u civitai-daemon -f" in result.stdout
    assert "GUI" in result.stdout

    log.unlink()
    result = run_install(synced, "--uninstall-service", *where, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not installed.exists()
    assert log.read_text().splitlines() == [f"stop {UNIT}", f"disable {UNIT}", "daemon-reload"]

    log.unlink()
    result = run_install(synced, "--uninstall-service", *where, env=env)
    assert result.returncode == 0 and "nothing to remove" in result.stdout
    assert not log.exists()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_sdnotify_sends_each_message(notify_socket: socket.socket) -> None:
    assert sdnotify.ready() and sdnotify.watchdog() and sdnotify.stopping()
    assert sdnotify.status("2 downloading,\n3 queued")
    received = [notify_socket.recv(4096).decode() for _ in range(4)]
    assert received == ["READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=2 downloading, 3 queued"]


def test_sdnotify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"civitai-daemon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_sdnotify_outside_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.watchdog() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_interval() is None
