#!/usr/bin/env python3
"""Set up civitai-daemon on this machine, then start it or install it as a systemd service.

    python3 install.py                      install uv if missing, `uv sync --no-dev`, start in the foreground
    python3 install.py --no-start           set up only
    sudo python3 install.py --service       set up, then install, enable and start the systemd unit
    sudo python3 install.py --uninstall-service
    python3 install.py --print-service      print the rendered unit; installs nothing

It runs with the system python3 (>= 3.11) before any virtual environment
exists, so it uses the standard library only. Exit codes: 0 success, 1 a step
failed, 2 bad usage or a missing precondition (root, systemd) — then nothing
has been changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import site
import socket
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

# pwd and grp exist on Unix only; they are imported where the service needs
# them, so the plain set-up also runs on Windows.

ROOT = Path(__file__).resolve().parent
UNIT_NAME = "civitai-daemon.service"
TEMPLATE = ROOT / "systemd" / UNIT_NAME
UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")

# Test hooks, honoured only for tests: pretend to be this effective uid, and
# run this program instead of `systemctl`.
FAKE_EUID_ENV = "CIVITAI_INSTALL_FAKE_EUID"
SYSTEMCTL_ENV = "CIVITAI_INSTALL_SYSTEMCTL"

# The few config.yaml keys this script needs, with the daemon's defaults (SPEC §4).
FOLDER_KEYS = ("inbox_dir", "processing_dir", "done_dir", "failed_dir", "download_dir", "logs_dir")
DEFAULTS: dict[str, str | None] = {
    "inbox_dir": "inbox",
    "processing_dir": "processing",
    "done_dir": "done",
    "failed_dir": "failed",
    "download_dir": "downloads",
    "logs_dir": "logs",
    "database": "completed.db",
    "host": "127.0.0.1",
    "active_port": None,
}
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))


class InstallError(Exception):
    """A step failed; the message says what to do. `code` is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def warn(message: str) -> None:
    print(f"install.py: warning: {message}", file=sys.stderr, flush=True)


_TOP_LEVEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)[ \t]*:(?:[ \t]+(.*))?$")


def _scalar(raw: str | None) -> str | None:
    """The value of a YAML plain or quoted scalar as text; None for null or empty."""
    raw = (raw or "").strip()
    if not raw:
        return None
    if raw[0] == '"':
        end = 1
        while end < len(raw) and raw[end] != '"':
            end += 2 if raw[end] == "\\" else 1
        try:
            # A YAML double-quoted string is close enough to a JSON one for paths.
            return json.loads(raw[: end + 1])
        except ValueError:
            return raw[1:end]
    if raw[0] == "'":
        match = re.match(r"'((?:[^']|'')*)'", raw)
        return match.group(1).replace("''", "'") if match else raw[1:]
    value = re.split(r"[ \t]#", raw, maxsplit=1)[0].strip()
    if value in ("null", "Null", "NULL", "~", ""):
        return None
    return value


def read_config(path: Path) -> dict[str, str | None]:
    """The keys in DEFAULTS from config.yaml's top-level `key: value` lines, defaults for the rest."""
    values = dict(DEFAULTS)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}", 2) from exc
    for line in text.splitlines():
        match = _TOP_LEVEL.match(line)
        if match and match.group(1) in values:
            value = _scalar(match.group(2))
            # Keep the default where the file leaves a path key empty.
            if value is not None or match.group(1) == "active_port":
                values[match.group(1)] = value
    return values


def resolve(config_path: Path, value: str) -> Path:
    """A config path: relative ones resolve against the config file's folder (SPEC §4)."""
    path = Path(value)
    if not path.is_absolute():
        path = config_path.parent / path
    return path.resolve()


def gui_address(config: dict[str, str | None]) -> str | None:
    """The GUI's URL from host/active_port, or None while the port is not yet chosen."""
    port = config.get("active_port")
    if not port or not str(port).isdigit():
        return None
    host = config.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/gui"


def describe_gui(config_path: Path) -> str:
    address = gui_address(read_config(config_path))
    if address:
        return f"the GUI is at {address}"
    return (
        "the GUI's port is picked at first start (8100-8200) and written to "
        f"{config_path} as active_port; the daemon logs the address"
    )


def find_uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    # Where `pip install [--user] uv` puts it, which need not be on PATH yet.
    folders = [
        Path.home() / ".local" / "bin",
        Path(site.getuserbase()) / "bin",
        Path(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user"))),
        Path(sysconfig.get_path("scripts")),
    ]
    name = "uv.exe" if os.name == "nt" else "uv"
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_uv() -> str:
    """The path of uv, installed with pip first when it is missing."""
    uv = find_uv()
    if uv:
        say(f"uv found: {uv}")
        return uv
    attempts = (
        [sys.executable, "-m", "pip", "install", "--user", "uv"],
        [sys.executable, "-m", "pip", "install", "uv"],
    )
    for command in attempts:
        say("uv not found; installing it: " + " ".join(command))
        if subprocess.run(command).returncode == 0:
            uv = find_uv()
            if uv:
                say(f"uv installed: {uv}")
                return uv
    raise InstallError(
        "could not install uv with pip (is pip installed? on an externally managed "
        "Python use `pipx install uv` or `curl -LsSf https://astral.sh/uv/install.sh | sh`), "
        "then run install.py again"
    )


def uv_env() -> dict[str, str]:
    """The environment for uv: the project's environment is always <checkout>/.venv."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)
    return env


def sync(uv: str) -> None:
    # The runtime only: a user's daemon carries no pytest, Playwright or
    # schemathesis. `.ci/run` adds the dev group for the test suite.
    say(f"installing dependencies: uv sync --frozen --no-dev (in {ROOT})")
    if subprocess.run([uv, "sync", "--frozen", "--no-dev"], cwd=ROOT, env=uv_env()).returncode != 0:
        raise InstallError("`uv sync --frozen --no-dev` failed; see its output above")


def set_up() -> str:
    uv = ensure_uv()
    sync(uv)
    return uv


def start_foreground(uv: str, config_path: Path | None) -> None:
    """Replace this process with the daemon in the foreground."""
    if not (ROOT / "launch.py").is_file():
        raise InstallError(f"{ROOT / 'launch.py'} is missing; is this a complete checkout?")
    # --no-dev: `uv run` would otherwise add the dev group to the environment.
    command = [uv, "run", "--frozen", "--no-dev", "python", "launch.py"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    say(f"starting civitai-daemon in the foreground (Ctrl+C stops it); {describe_gui(config_path or ROOT / 'config.yaml')}")
    say(" ".join(command))
    sys.stdout.flush()
    os.chdir(ROOT)
    if os.name != "nt":
        os.execve(uv, command, uv_env())
    # Windows has no real exec: run the daemon as a child. Ctrl+C reaches both
    # processes; keep waiting while the daemon drains instead of killing it.
    child = subprocess.Popen(command, env=uv_env())
    while True:
        try:
            raise SystemExit(child.wait())
        except KeyboardInterrupt:
            continue


def effective_uid() -> int:
    fake = os.environ.get(FAKE_EUID_ENV)
    if fake is not None and fake.strip().isdigit():
        return int(fake)
    return os.geteuid()


def default_user() -> str:
    import pwd

    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and effective_uid() == 0:
        return sudo_user
    try:
        return pwd.getpwuid(effective_uid()).pw_name
    except KeyError:
        return pwd.getpwuid(os.geteuid()).pw_name


def _is_under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _unit_escape(value: str) -> str:
    """Escape `%` specifiers, which systemd expands in nearly every setting."""
    return value.replace("%", "%%")


def _unit_word(value: str) -> str:
    """One word of a space-separated setting (ExecStart=, ReadWritePaths=), quoted when needed."""
    value = _unit_escape(value)
    if re.search(r"[\s\"'\\]", value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _exec_word(value: str) -> str:
    # ExecStart= also expands $VARIABLES.
    return _unit_word(value).replace("$", "$$")


def read_write_paths(config_path: Path, config: dict[str, str | None]) -> list[Path]:
    """The folders the daemon writes: config.yaml's and the database's folder, and every data folder.

    Folders inside another listed folder are dropped: a ReadWritePaths= entry covers its subtree.
    """
    paths = {config_path.parent.resolve(), resolve(config_path, config["database"] or "completed.db").parent}
    for key in FOLDER_KEYS:
        paths.add(resolve(config_path, config[key] or DEFAULTS[key] or key))
    kept: list[Path] = []
    for path in sorted(paths, key=lambda p: (len(p.parts), str(p))):
        if not any(_is_under(path, outer) for outer in kept):
            kept.append(path)
    return kept


def protect_home(paths: list[Path], readable: list[Path]) -> str:
    """`no` when the daemon writes under a home folder, `read-only` when it only reads there, else `yes`."""
    if any(_is_under(path, home) for path in paths for home in HOME_ROOTS):
        return "no"
    if any(_is_under(path, home) for path in readable for home in HOME_ROOTS):
        return "read-only"
    return "yes"


class Unit:
    """The unit rendered for this checkout, with what it needs from the host."""

    def __init__(self, config_path: Path, user: str) -> None:
        import grp
        import pwd

        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise InstallError(f"no such user: {user!r} (pass an existing one with --user NAME)", 2) from None
        self.user = user
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.group = grp.getgrgid(entry.pw_gid).gr_name
        self.config_path = config_path
        config = read_config(config_path)
        self.download_dir = resolve(config_path, config["download_dir"] or "downloads")
        self.rw_paths = read_write_paths(config_path, config)
        self.python = ROOT / ".venv" / "bin" / "python"
        interpreter = Path(os.path.realpath(self.python))
        self.protect_home = protect_home(self.rw_paths, [ROOT, interpreter])

    def render(self) -> str:
        try:
            template = TEMPLATE.read_text(encoding="utf-8")
        except OSError as exc:
            raise InstallError(f"cannot read the unit template {TEMPLATE}: {exc.strerror}", 2) from exc
        values = {
            "@ROOT@": str(ROOT),
            "@PYTHON@": str(self.python),
            "@CONFIG@": str(self.config_path),
            "@USER@": self.user,
            "@GROUP@": self.group,
            "@DOWNLOAD_DIR@": str(self.download_dir),
            "@PROTECT_HOME@": self.protect_home,
        }

        def fill(text: str) -> str:
            for placeholder, value in values.items():
                text = text.replace(placeholder, value)
            return text

        lines = []
        for line in template.splitlines(keepends=True):
            key, sep, value = line.rstrip("\n").partition("=")
            if line.startswith("#") or not sep:
                lines.append(fill(line))
                continue
            if key == "ExecStart":
                # Each word is filled first, then quoted whole: a path may hold spaces.
                value = " ".join(_exec_word(fill(word)) for word in value.split())
            elif value == "@RW_PATHS@":
                value = " ".join(_unit_word(str(path)) for path in self.rw_paths)
            else:
                # The rest of the line is one value (WorkingDirectory=, User=, ...), unquoted.
                value = _unit_escape(fill(value))
            lines.append(f"{key}={value}\n")
        text = "".join(lines)
        left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
        if left:
            raise InstallError(f"the unit template has unknown placeholders: {', '.join(left)}", 2)
        return text

    def warnings(self) -> list[str]:
        """Problems the service user will hit at start, found without changing anything."""
        import grp

        problems = []
        if not self.python.exists():
            problems.append(f"{self.python} does not exist yet; run `python3 install.py --no-start` first")
        if not (ROOT / "launch.py").is_file():
            problems.append(f"{ROOT / 'launch.py'} is missing; the service cannot start without it")
        if self.uid == 0:
            return problems
        groups = {g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem} | {self.gid}
        interpreter = Path(os.path.realpath(self.python))
        if self.python.exists() and not _can_access(interpreter, self.uid, groups, os.X_OK):
            problems.append(
                f"user {self.user} cannot run {interpreter} (the venv's interpreter); "
                f"set up the checkout as {self.user} or pass --user"
            )
        for path in self.rw_paths:
            if path.exists() and not _can_access(path, self.uid, groups, os.W_OK | os.X_OK):
                problems.append(f"user {self.user} cannot write {path}; fix with: chown -R {self.user}: {path}")
        return problems


def _can_access(path: Path, uid: int, groups: set[int], mode: int) -> bool:
    """Whether `uid` may search every parent of `path` and has `mode` on it (plain permission bits)."""
    checks = [(parent, os.X_OK) for parent in reversed(path.parents)] + [(path, mode)]
    for item, wanted in checks:
        try:
            info = item.stat()
        except OSError:
            return False
        if info.st_uid == uid:
            bits = (info.st_mode >> 6) & 7
        elif info.st_gid in groups:
            bits = (info.st_mode >> 3) & 7
        else:
            bits = info.st_mode & 7
        if bits & wanted != wanted:
            return False
    return True


def systemctl(*args: str, check: bool = True) -> bool:
    command = [os.environ.get(SYSTEMCTL_ENV) or "systemctl", *args]
    say(" ".join(["systemctl", *args]))
    ok = subprocess.run(command).returncode == 0
    if not ok and check:
        raise InstallError(
            f"`systemctl {' '.join(args)}` failed; see `systemctl status civitai-daemon` "
            "and `journalctl -u civitai-daemon -e`"
        )
    return ok


def require_root_and_systemd(flag: str, systemd_dir: Path) -> None:
    if effective_uid() != 0:
        raise InstallError(f"{flag} needs root; run: sudo python3 install.py {flag}", 2)
    if not systemd_dir.is_dir():
        raise InstallError(f"{flag} needs a host running systemd ({systemd_dir} does not exist)", 2)


def install_service(unit: Unit, unit_dir: Path) -> None:
    for path in unit.rw_paths:
        if not path.exists():
            # systemd refuses to start a unit whose ReadWritePaths= are missing.
            say(f"creating {path}")
            path.mkdir(parents=True)
            if unit.uid != 0:
                os.chown(path, unit.uid, unit.gid)
    for problem in unit.warnings():
        warn(problem)
    target = unit_dir / UNIT_NAME
    say(f"writing {target} (User={unit.user}, ProtectHome={unit.protect_home})")
    temporary = target.with_name(f".{UNIT_NAME}.tmp")
    temporary.write_text(unit.render(), encoding="utf-8")
    os.chmod(temporary, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    os.replace(temporary, target)
    systemctl("daemon-reload")
    systemctl("enable", UNIT_NAME)
    systemctl("start", UNIT_NAME)
    say("civitai-daemon is running as a systemd service")
    print("    status:  systemctl status civitai-daemon")
    print("    logs:    journalctl -u civitai-daemon -f")
    print("    stop:    systemctl stop civitai-daemon")
    print(f"    remove:  sudo python3 {shlex.quote(str(ROOT / 'install.py'))} --uninstall-service")
    print(f"    {describe_gui(unit.config_path)}")


def uninstall_service(unit_dir: Path) -> None:
    target = unit_dir / UNIT_NAME
    if not target.exists():
        say(f"{target} is not installed; nothing to remove")
        return
    # A unit that is already stopped or disabled is fine: keep going.
    systemctl("stop", UNIT_NAME, check=False)
    systemctl("disable", UNIT_NAME, check=False)
    say(f"removing {target}")
    target.unlink()
    systemctl("daemon-reload")
    say("civitai-daemon's service is removed (the checkout, config and downloads are untouched)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Set up civitai-daemon (uv, dependencies), then start it or install its systemd service.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-start", action="store_true", help="set up only; do not start the daemon")
    mode.add_argument("--service", action="store_true", help="as root: install, enable and start the systemd unit")
    mode.add_argument("--uninstall-service", action="store_true", help="as root: stop, disable and remove the unit")
    mode.add_argument("--print-service", action="store_true", help="print the rendered unit; install nothing")
    parser.add_argument("--config", metavar="PATH", help="config file (default: config.yaml in this checkout)")
    parser.add_argument("--user", metavar="NAME", help="the service's user (default: $SUDO_USER, else you)")
    parser.add_argument("--unit-dir", metavar="DIR", type=Path, default=UNIT_DIR,
                        help=f"where the unit is installed (default: {UNIT_DIR})")
    parser.add_argument("--systemd-dir", metavar="DIR", type=Path, default=SYSTEMD_RUNTIME_DIR,
                        help=f"present only when systemd runs the host (default: {SYSTEMD_RUNTIME_DIR})")
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    config_path = Path(args.config).expanduser().absolute() if args.config else None
    service_config = config_path or ROOT / "config.yaml"
    if os.name == "nt" and (args.print_service or args.service or args.uninstall_service):
        raise InstallError("the systemd service is for Linux; on Windows see docs/windows.md", 2)

    if args.print_service:
        unit = Unit(service_config, args.user or default_user())
        sys.stdout.write(unit.render())
        for problem in unit.warnings():
            warn(problem)
        return 0
    if args.uninstall_service:
        require_root_and_systemd("--uninstall-service", args.systemd_dir)
        uninstall_service(args.unit_dir)
        return 0
    if args.service:
        require_root_and_systemd("--service", args.systemd_dir)
        unit = Unit(service_config, args.user or default_user())
        unit.render()  # fail on a broken template before changing anything
        set_up()
        install_service(unit, args.unit_dir)
        return 0

    uv = set_up()
    if args.no_start:
        say("set-up done; start the daemon with `python3 install.py` or `uv run --no-dev civitai-daemon run`")
        return 0
    start_foreground(uv, config_path)
    return 0  # not reached: start_foreground replaces this process


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < (3, 11):
        print(f"install.py: Python >= 3.11 is needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except InstallError as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("install.py: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
