"""Fixtures that run the real daemon process against a local fake Civitai."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from daemonproc import banner_port, healthy, spawn, wait_for, write_config  # noqa: E402,F401
from fakeciv import FakeCivitai  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """One real `civitai-daemon run` process in its own folder."""

    def __init__(self, home, config):
        self.home = Path(home)
        self.config = config
        self.proc = None
        self.port = None
        self.token = config.get("api_token")

    @property
    def config_path(self):
        return self.home / "config.yaml"

    def write_config(self):
        write_config(self.config_path, self.config)

    def start(self, wait=True, env=None):
        if not self.config_path.exists():
            self.write_config()
        self.stderr = open(self.home / "stderr.txt", "ab")
        self.proc = spawn(self.config_path, self.home, subprocess.PIPE, self.stderr, env=env)
        if wait:
            line = self.proc.stdout.readline().decode()
            self.port = banner_port(line)
            if self.port is None:
                self.proc.wait(5)
                raise AssertionError(f"daemon did not start: {line!r} {self.read_stderr()}")
            wait_for(lambda: healthy(self.url), 10, message="daemon health")
        return self

    def read_stderr(self):
        return (self.home / "stderr.txt").read_text(errors="replace")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path, **kwargs):
        return requests.get(self.url + path, headers=self.headers(), timeout=10, **kwargs)

    def post(self, path, body=None, **kwargs):
        return requests.post(self.url + path, json=body, headers=self.headers(), timeout=10, **kwargs)

    def drop(self, name, manifest):
        """Write a manifest the safe way: a dotfile, then rename into inbox/."""
        inbox = self.home / "inbox"
        inbox.mkdir(exist_ok=True)
        tmp = inbox / f".{name}.tmp"
        # bytes are written as they are: a workflow file or a PNG image (SPEC §13)
        tmp.write_bytes(manifest) if isinstance(manifest, bytes) else tmp.write_text(json.dumps(manifest))
        os.replace(tmp, inbox / name)

    def result(self, name, timeout=60):
        stem = name.rsplit(".", 1)[0]
        def find():
            for folder in ("done", "failed"):
                path = self.home / folder / f"{stem}.result.json"
                if path.exists() and (self.home / folder / name).exists():
                    return folder, json.loads(path.read_text())
            return None
        return wait_for(find, timeout, message=f"result of {name}")

    def download(self, download_id):
        return self.get(f"/api/downloads/{download_id}").json()

    def wait_state(self, download_id, states, timeout=60):
        states = {states} if isinstance(states, str) else set(states)
        return wait_for(lambda: (d := self.download(download_id))["state"] in states and d, timeout,
                        message=f"download {download_id} in {states}")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("daemon did not stop in time")
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode if self.proc else None

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def logs(self):
        path = self.home / "logs" / "download.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def fake(tmp_path):
    server = FakeCivitai(tmp_path / "fake").start()
    yield server
    server.stop()


@pytest.fixture
def make_daemon(tmp_path, fake):
    """Factory: make_daemon(**config) → a started DaemonProcess (stopped at teardown)."""
    started = []

    def factory(start=True, home=None, **config):
        base = {"civitai_base_url": fake.base_url, "backoff": 0.05, "backoff_max": 0.5, "timeout": 5,
                "retries": 3, "log_level": "DEBUG", "workers": 2}
        base.update(config)
        folder = Path(home) if home else tmp_path / f"daemon{len(started)}"
        folder.mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(folder, base)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in started:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


# -- browser tests ---------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _need_chromium():
    problem = None
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        problem = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for all browser tests (with CI set, a missing browser fails)."""
    _need_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


# -- local receivers and files -------------------------------------------------------
@pytest.fixture
def make_hook():
    """Factory: make_hook(delay=, status=, reply=) → a started local receiver (stopped at teardown)."""
    from receivers import Receiver
    started = []

    def make(**kwargs):
        receiver = Receiver(**kwargs).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def hook(make_hook):
    """A real local HTTP receiver for webhooks (and the fake Telegram Bot API)."""
    return make_hook()


def sha(path):
    """The SHA256 of a file, read in blocks (test files reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- the in-process harness: real parts, no daemon process, no threads ---------------------
@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """A fresh queue database opened as the daemon opens it: an SQLite file in tmp_path, then a fresh
    database on the session's private PostgreSQL (SPEC §14: the same tests run on both engines)."""
    from daemon.database import open_database
    where = tmp_path / "queue.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db = open_database(where)
    yield db
    db.close()


class Recorder:
    """A bus subscriber that keeps every event; `then(name, fn)` runs fn(event) when one is published."""

    def __init__(self):
        self.events = []
        self._hooks = []

    def __call__(self, event):
        self.events.append(event)
        for name, fn in list(self._hooks):
            if event.name == name:
                self._hooks.remove((name, fn))
                fn(event)

    def names(self, download_id=None):
        return [e.name for e in self.events if download_id is None or e.data.get("id") == download_id]

    def then(self, name, fn):
        self._hooks.append((name, fn))


@pytest.fixture
def recorder():
    return Recorder()


class Sleeps:
    """The injected sleep: records each wait and returns at once (True when the stop event is set)."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds, stop):
        self.waits.append(seconds)
        return stop.is_set()


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def core(tmp_path, fake, database, recorder, sleeps):
    """Factory: core(**config) → the daemon's download parts in this process (service.build_core),
    against the fake Civitai; `recorder` sees every event; retries wait through `sleeps`."""
    from daemon import config as config_mod, service

    def factory(**config):
        base = {"civitai_base_url": fake.base_url, "backoff": 0.05, "backoff_max": 0.5, "timeout": 5,
                "retries": 3, "workers": 1, "sidecars": False}
        base.update(config)
        path = tmp_path / "config.yaml"
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
        settings = config_mod.load(path)
        parts = service.build_core(settings, sleep=sleeps)
        parts.settings = settings
        parts.bus.subscribe(recorder)
        return parts

    return factory


# -- PostgreSQL (fleet mode) ----------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the session (with CI set, a missing PostgreSQL fails)."""
    import pgserver
    bindir = pgserver.find_bin()
    if bindir is None:
        problem = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    server = pgserver.PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """The URL of a fresh, empty database on the session's PostgreSQL, dropped afterwards."""
    name, url = postgres.create_database()
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """The `database` setting for each engine: an SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    return request.getfixturevalue("pg_url")
