"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temp folder, on a free port.

Run as root, the server runs as `nobody` (PostgreSQL refuses to run as root), with
its data folder owned by that user. Connections over TCP need the password
(scram-sha-256), so the tests use URLs with a real password in them.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "civitai"
PASSWORD = "pg-s3cret-Pa55word"


def find_bin():
    """The folder holding initdb and pg_ctl, or None."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return folder
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found else None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir):
        self.bindir = Path(bindir)
        self.root = Path(tempfile.mkdtemp(prefix="civitai-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user = None
        if os.geteuid() == 0:
            self.as_user = "nobody"
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._counter = 0

    def _run(self, *args):
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")
        return result

    def start(self):
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            entry = pwd.getpwnam(self.as_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", "60", "start")
        return self

    def stop(self):
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname="postgres"):
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql):
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self):
        """A fresh, empty database; returns its URL."""
        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name, self.url(name)

    def drop_database(self, name):
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
