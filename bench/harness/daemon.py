"""The daemon under test: one real civitai-daemon process in its own folder under bench/work/.

Started the way tests/conftest.py starts it (tests/daemonproc.py: the command, the
environment, the start-up line, /healthz), then driven over plain http.client so
the bench measures the daemon, not a client library.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import ROOT, WORK
from .measure import children, children_lock, proc_cpu, proc_status, reset_peak
from .servers import free_port, unlink_all

sys.path.insert(0, str(ROOT / "tests"))
from daemonproc import banner_port, healthy, spawn, write_config  # noqa: E402

BASE_CONFIG = {
    "download_dir": "downloads", "inbox_dir": "inbox", "processing_dir": "processing", "done_dir": "done",
    "failed_dir": "failed", "logs_dir": "logs", "database": "completed.db",
    "log_level": "INFO", "timeout": 30, "retries": 2, "sidecars": False, "update_check": {"enabled": False},
}


class Daemon:
    """One civitai-daemon process; `config` adds to (or, with None values, removes from) BASE_CONFIG."""

    def __init__(self, name, **config):
        self.name = name
        self.dir = WORK / f"daemon-{name}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.port = free_port()
        settings = {**BASE_CONFIG, "active_port": self.port, **config}
        write_config(self.dir / "config.yaml", {k: v for k, v in settings.items() if v is not None})
        self.downloads = self.dir / "downloads"
        self.inbox = self.dir / "inbox"
        self.done = self.dir / "done"
        self.failed = self.dir / "failed"
        self._seq = 0
        self.stdout = open(self.dir / "stdout.txt", "wb")
        self.proc = spawn(self.dir / "config.yaml", self.dir, self.stdout, subprocess.STDOUT, new_session=True)
        with children_lock:
            children.append(self.proc)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while banner_port((self.dir / "stdout.txt").read_text(errors="replace")) != self.port:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "stdout.txt").read_text(errors="replace")
                raise RuntimeError(f"the daemon did not start ({name}):\n{text[-2000:]}")
            time.sleep(0.05)
        while not healthy(f"http://127.0.0.1:{self.port}"):  # the line may come before the workers are up
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon's /healthz never answered 200 ({name})")
            time.sleep(0.05)

    # -- HTTP --------------------------------------------------------------------------------
    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def get(self, path, conn=None):
        """(status, body bytes); over `conn` (keep-alive) or a new connection."""
        own = conn is None
        conn = conn or self.conn()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            if own:
                conn.close()

    def post(self, path, data):
        """(status, parsed JSON body)."""
        conn = self.conn()
        try:
            conn.request("POST", path, body=json.dumps(data), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            try:
                return response.status, json.loads(body or b"null")
            except ValueError:
                return response.status, body.decode(errors="replace")
        finally:
            conn.close()

    def status(self):
        code, body = self.get("/api/status")
        if code != 200:
            raise RuntimeError(f"/api/status answered {code}")
        return json.loads(body)

    # -- manifests ------------------------------------------------------------------------------
    def write_manifest(self, name, body):
        """inbox/.name.json.tmp, then a rename to name.json: the rename is the hand-off."""
        tmp = self.inbox / f".{name}.json.tmp"
        tmp.write_text(body)
        os.replace(tmp, self.inbox / f"{name}.json")

    def drop(self, name, items):
        self.write_manifest(name, json.dumps({"items": items}))

    def wait_manifest(self, name, timeout=600, poll=0.005):
        """Block until done/name.result.json exists; return (time it appeared, result). A failure raises."""
        done = self.done / f"{name}.result.json"
        failed = self.failed / f"{name}.result.json"
        deadline = time.monotonic() + timeout
        while True:
            if done.exists():
                t = time.perf_counter()
                return t, json.loads(done.read_text())
            if failed.exists():
                raise RuntimeError(f"manifest {name} failed: {failed.read_text()[:1000]}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"manifest {name} not done within {timeout} s")
            time.sleep(poll)

    def next_name(self, prefix):
        self._seq += 1
        return f"{prefix}-{self._seq:04d}"

    def clean(self):
        """Remove the downloaded files and the finished manifests (the database keeps its rows)."""
        for folder in (self.downloads, self.done, self.failed):
            unlink_all(folder)

    # -- /proc --------------------------------------------------------------------------------
    def cpu(self):
        return proc_cpu(self.pid)

    def proc_status(self, key):
        return proc_status(self.pid, key)

    def reset_peak(self):
        return reset_peak(self.pid)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.stdout.close()
        with children_lock:
            if self.proc in children:
                children.remove(self.proc)
