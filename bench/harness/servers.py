"""The other side of the wire: the tools the peers need, the served files, and a private nginx."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import BENCH, FILES, WORK, MiB
from .measure import log

TOOLS = {"nginx": "nginx", "aria2c": "aria2", "curl": "curl", "sha256sum": "coreutils", "xargs": "findutils"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_bin():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_tools():
    """Install the peers' tools with apt-get when running as root on Debian; else stop saying what to install."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)
               and not (tool == "nginx" and os.path.exists("/usr/sbin/nginx"))]
    if not missing:
        return
    packages = sorted({TOOLS[t] for t in missing})
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing", " ".join(packages), "with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env)
        # the Debian package starts a system nginx on port 80; the bench uses its own
        subprocess.run(["systemctl", "disable", "--now", "nginx"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return
    sys.exit(f"bench: missing {', '.join(missing)}; install them first, e.g. "
             f"`sudo apt-get install -y {' '.join(packages)}`")


def unlink_all(folder):
    """Empty a folder (it stays); files a running daemon removes meanwhile are fine."""
    if not os.path.exists(folder):
        return
    for entry in os.scandir(folder):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def warm(paths):
    """Read files once so nginx (or a scan) reads them from the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 * MiB):
                pass


def drop_caches():
    """Empty the page cache (root only): a cold read. Returns whether it could."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def blob(size):
    """The served file of `size` random bytes shared by the single, capped, memory and API scenarios."""
    return f"blob-{size // MiB}MiB.bin"


class Files:
    """The served files, generated once (random bytes) into bench/.files/ with their SHA256."""

    def __init__(self):
        FILES.mkdir(parents=True, exist_ok=True)
        self.index_path = FILES / "index.json"
        try:
            self.index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.index = {}

    def ensure(self, rel, size):
        """The SHA256 of FILES/rel, writing `size` random bytes there first unless it is already there."""
        path = FILES / rel
        entry = self.index.get(rel)
        if path.exists() and entry and entry["size"] == size and path.stat().st_size == size \
                and entry.get("mtime") == path.stat().st_mtime_ns:
            return entry["sha256"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if size >= 64 * MiB:
            log(f"generating {rel} ({size / MiB:.0f} MiB of random bytes)")
        h = hashlib.sha256()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MiB))
                h.update(block)
                f.write(block)
                left -= len(block)
        os.replace(tmp, path)
        self.index[rel] = {"size": size, "sha256": h.hexdigest(), "mtime": path.stat().st_mtime_ns}
        return h.hexdigest()

    def save(self):
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, indent=0, sort_keys=True))
        os.replace(tmp, self.index_path)

    def path(self, rel):
        return FILES / rel


class Nginx:
    """A private nginx on 127.0.0.1 serving bench/.files/ (as is under /, at `cap` per connection under /capped/)."""

    def __init__(self, cap="20m"):
        self.work = WORK / "nginx"
        self.port = free_port()
        self.cap = cap
        self.proc = None

    def start(self):
        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "tmp").mkdir(parents=True)
        conf = (BENCH / "nginx.conf").read_text()
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = (conf.replace("@@USER@@", user).replace("@@WORK@@", str(self.work))
                .replace("@@PORT@@", str(self.port)).replace("@@ROOT@@", str(FILES))
                .replace("@@CAP@@", self.cap))
        (self.work / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen([nginx_bin(), "-p", str(self.work), "-c", str(self.work / "nginx.conf"),
                                      "-e", str(self.work / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx did not start: " + self.proc.stderr.read().decode(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not open its port within 10 s")
        log(f"nginx {self.version()} on 127.0.0.1:{self.port} (1 worker, sendfile; /capped/ at limit_rate "
            f"{self.cap} per connection) serving {FILES}")

    def url(self, rel):
        return f"http://127.0.0.1:{self.port}/{rel}"

    def capped_url(self, rel):
        return f"http://127.0.0.1:{self.port}/capped/{rel}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    @staticmethod
    def version():
        out = subprocess.run([nginx_bin(), "-v"], capture_output=True, text=True)
        return (out.stderr or out.stdout).strip().split("/")[-1]
