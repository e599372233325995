#!/usr/bin/env python3
"""civitai-daemon benchmark: the daemon against curl, sha256sum and aria2c on a local nginx.

    uv run python bench/run.py                 # full run (~10-15 min), writes bench/RESULTS.md
    uv run python bench/run.py --quick         # small files, 1 repetition: a smoke test
    uv run python bench/run.py --only single,parallel --reps 5

See bench/README.md for what each scenario measures and how.
"""
import argparse
import atexit
import datetime
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FILES = BENCH / ".files"
WORK = BENCH / "work"
MiB = 1 << 20
GiB = 1 << 30
MB = 10**6
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEYS = ["status", "downloads", "status_new", "downloads_new"]
SCENARIOS = ["single", "parallel", "throttle", "ingest", "memory", "api"]

FULL = dict(single=1 * GiB, par_n=8, par_size=128 * MiB, thr_size=200 * MiB, thr_shared=100 * MiB,
            thr_rate="20MB", thr_rate_bps=20 * MB, ingest_n=1000, small_size=1024,
            mem_sizes=(1 * GiB, 4 * GiB), api_rows=10_000, api_requests=200, api_load=1 * GiB,
            reps=3, settle=4.0)
QUICK = dict(single=64 * MiB, par_n=8, par_size=8 * MiB, thr_size=10 * MiB, thr_shared=5 * MiB,
             thr_rate="5MB", thr_rate_bps=5 * MB, ingest_n=100, small_size=1024,
             mem_sizes=(64 * MiB, 256 * MiB), api_rows=300, api_requests=40, api_load=64 * MiB,
             reps=1, settle=1.0)

_children = []      # Popen objects to stop on exit
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt_range(values, unit="s", digits=2, scale=1.0):
    m, lo, hi = med(values)
    if m is None:
        return "–"
    if len(values) == 1:
        return f"{m * scale:.{digits}f} {unit}".strip()
    return f"{m * scale:.{digits}f} {unit} ({lo * scale:.{digits}f}–{hi * scale:.{digits}f})".replace("  ", " ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_busy(interval=0.5):
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        idle = parts[3] + parts[4]
        return idle, sum(parts)
    i1, t1 = read()
    time.sleep(interval)
    i2, t2 = read()
    return 1.0 - (i2 - i1) / max(1, t2 - t1)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Settler:
    """Waits `settle` seconds after the last cleanup, and (bounded) for a quiet machine."""

    def __init__(self, settle, max_wait, busy_limit=0.15):
        self.settle, self.max_wait, self.busy_limit = settle, max_wait, busy_limit
        self.last_cleanup = 0.0
        self.records = []   # (label, busy, loadavg, waited)

    def cleaned(self):
        self.last_cleanup = time.monotonic()

    def wait(self, label):
        start = time.monotonic()
        busy = cpu_busy(0.5)
        while busy > self.busy_limit and time.monotonic() - start < self.max_wait:
            busy = cpu_busy(0.5)
        remaining = self.settle - (time.monotonic() - self.last_cleanup)
        if remaining > 0:
            time.sleep(remaining)
        record = (label, busy, loadavg(), time.monotonic() - start)
        self.records.append(record)
        return record


def run_proc(cmd, **kwargs):
    """Run a command; return (wall seconds, CPU seconds, peak RSS bytes) measured with wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    with _lock:
        _children.append(proc)
    # ru_maxrss would include the forked copy of this Python process; sample the child's own VmHWM
    sampler = RssSampler(proc.pid, interval=0.02, key="VmHWM")
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    sampler.halt.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    with _lock:
        _children.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[:500]}")
    return wall, usage.ru_utime + usage.ru_stime, sampler.peak or None


def unlink_all(folder):
    folder = Path(folder)
    if not folder.exists():
        return
    for entry in os.scandir(folder):
        try:  # a running daemon may remove a .part (or link a file) under our feet
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def warm(paths):
    """Read the served files once so nginx sends them from the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 * MiB):
                pass


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# set-up: tools, files, nginx
# ---------------------------------------------------------------------------------------------
def ensure_tools():
    missing = [tool for tool in ("nginx", "aria2c", "curl", "sha256sum") if not shutil.which(tool)
               and not (tool == "nginx" and Path("/usr/sbin/nginx").exists())]
    if not missing:
        return
    packages = sorted({"nginx": "nginx", "aria2c": "aria2", "curl": "curl", "sha256sum": "coreutils"}[t]
                      for t in missing)
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


def nginx_bin():
    return shutil.which("nginx") or "/usr/sbin/nginx"


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
    def __init__(self):
        self.work = WORK / "nginx"
        self.port = free_port()
        self.proc = None

    def start(self):
        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "tmp").mkdir(parents=True)
        conf = (BENCH / "nginx.conf").read_text()
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = (conf.replace("@@USER@@", user).replace("@@WORK@@", str(self.work))
                .replace("@@PORT@@", str(self.port)).replace("@@ROOT@@", str(FILES)))
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
        log(f"nginx {self.version()} on 127.0.0.1:{self.port} (1 worker, sendfile) serving {FILES}")

    def url(self, rel):
        return f"http://127.0.0.1:{self.port}/{rel}"

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


# ---------------------------------------------------------------------------------------------
# the daemon under test
# ---------------------------------------------------------------------------------------------
class Daemon:
    """One civitai-daemon process in its own folder under bench/work/."""

    def __init__(self, name, workers=4, throttle=0):
        self.dir = WORK / f"daemon-{name}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.port = free_port()
        throttle_value = json.dumps(throttle) if isinstance(throttle, str) else throttle
        (self.dir / "config.yaml").write_text(
            "download_dir: downloads\ninbox_dir: inbox\nprocessing_dir: processing\ndone_dir: done\n"
            "failed_dir: failed\nlogs_dir: logs\ndatabase: completed.db\n"
            f"active_port: {self.port}\nworkers: {workers}\nthrottle: {throttle_value}\n"
            "log_level: INFO\ntimeout: 30\nretries: 2\nsidecars: false\n"
            "update_check:\n  enabled: false\n")
        self.downloads = self.dir / "downloads"
        self.inbox = self.dir / "inbox"
        self.done = self.dir / "done"
        self.failed = self.dir / "failed"
        self.stdout = open(self.dir / "stdout.txt", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("CIVITAI_API_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(self.dir / "config.yaml")],
                                     cwd=self.dir, stdout=self.stdout, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        with _lock:
            _children.append(self.proc)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        banner = f"127.0.0.1:{self.port}/gui"
        while True:
            text = (self.dir / "stdout.txt").read_text(errors="replace")
            if banner in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start ({name}):\n{text[-2000:]}")
            time.sleep(0.05)
        while True:  # the banner may come before the watcher and workers are up
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon's /healthz never answered 200 ({name})")
            time.sleep(0.05)
        self._seq = 0

    # -- HTTP --------------------------------------------------------------------------------
    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def get(self, path, conn=None):
        own = conn is None
        conn = conn or self.conn()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            return response.status, body
        finally:
            if own:
                conn.close()

    def post(self, path, data):
        conn = self.conn()
        try:
            conn.request("POST", path, body=json.dumps(data), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def status(self):
        code, body = self.get("/api/status")
        if code != 200:
            raise RuntimeError(f"/api/status answered {code}")
        return json.loads(body)

    # -- manifests ------------------------------------------------------------------------------
    def drop(self, name, items):
        """Write inbox/.name.json.tmp, then rename it to name.json (the rename is the hand-off)."""
        tmp = self.inbox / f".{name}.json.tmp"
        tmp.write_text(json.dumps({"items": items}))
        os.replace(tmp, self.inbox / f"{name}.json")

    def wait_manifest(self, name, timeout=600, poll=0.005):
        """Block until done/name.result.json (or failed/...) exists; return (time it appeared, result)."""
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
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime + stime (fields 14, 15)

    def proc_status(self, key):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    def reset_peak(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")   # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.stdout.close()
        with _lock:
            if self.proc in _children:
                _children.remove(self.proc)


class RssSampler(threading.Thread):
    """Samples VmRSS of a pid every `interval` s while running; .peak is the largest seen."""

    def __init__(self, pid, interval=0.05, key="VmRSS"):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.key = pid, interval, 0, key + ":"
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith(self.key):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            self.halt.wait(self.interval)


class SizeSampler(threading.Thread):
    """Samples the size of files (first existing path of each candidate list) every 10 ms."""

    def __init__(self, candidates, interval=0.01):
        super().__init__(daemon=True)
        self.candidates, self.interval = candidates, interval
        self.samples = [[] for _ in candidates]   # per file: (t, size)
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.perf_counter()
            for paths, samples in zip(self.candidates, self.samples):
                size = 0
                for path in paths:
                    try:
                        size = os.stat(path).st_size
                        break
                    except OSError:
                        continue
                samples.append((t, size))
            self.halt.wait(self.interval)


def steady_rate(samples, total, skip=1.0):
    """Bytes/s between (first byte + skip) and the last sample before the file was complete.

    Both ends use the time a size was first observed, so a stepwise writer (the throttle
    reserves a slot per read) is measured edge to edge rather than mid-step.
    """
    first_seen = {}
    for t, size in samples:
        first_seen.setdefault(size, t)
    nonzero = [(t, s) for t, s in samples if s > 0]
    if len(nonzero) < 3:
        return None, None
    t_first = nonzero[0][0]
    after = [(t, s) for t, s in nonzero if t >= t_first + skip and s < total]
    if len(after) < 2:
        return None, None
    s_a, s_b = after[0][1], after[-1][1]
    t_a, t_b = first_seen[s_a], first_seen[s_b]
    if t_b <= t_a:
        return None, None
    return (s_b - s_a) / (t_b - t_a), (t_a, t_b)


# ---------------------------------------------------------------------------------------------
# the scenarios
# ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, prof):
        self.args, self.p = args, prof
        self.files = Files()
        self.nginx = Nginx()
        self.settler = Settler(args.settle if args.settle is not None else prof["settle"], args.max_wait)
        self.results = {}
        self.daemons = []
        self.peer_dir = WORK / "peers"

    # -- infrastructure ----------------------------------------------------------------------
    def daemon(self, name, **kwargs):
        d = Daemon(name, **kwargs)
        self.daemons.append(d)
        return d

    def stop_daemon(self, d):
        d.stop()
        self.daemons.remove(d)

    def peer_clean(self):
        unlink_all(self.peer_dir)
        self.peer_dir.mkdir(parents=True, exist_ok=True)
        self.settler.cleaned()

    def timed(self, label):
        rec = self.settler.wait(label)
        flag = " (machine busy)" if rec[1] > self.settler.busy_limit else ""
        log(f"  {label}: start at {rec[1] * 100:.0f}% CPU busy, load {rec[2]:.2f}{flag}")
        return rec

    # -- single ---------------------------------------------------------------------------------
    def single(self):
        size = self.p["single"]
        rel = blob(size)
        sha = self.files.ensure(rel, size)
        self.files.save()
        url = self.nginx.url(rel)
        d = self.daemon("single", workers=2)
        warm([self.files.path(rel)])
        self.peer_clean()
        d.clean()
        res = {k: [] for k in ("daemon", "daemon_cpu", "curl", "curl_cpu", "naive", "naive_cpu", "aria", "aria_cpu")}
        out = self.peer_dir / "single.bin"
        for rep in range(self.args.reps):
            log(f"single {size / MiB:.0f} MiB, repetition {rep + 1}/{self.args.reps}")
            # A: the daemon
            name = d.next_name("single")
            self.timed("daemon")
            cpu0 = d.cpu()
            t0 = time.perf_counter()
            d.drop(name, [{"url": url, "sha256": sha, "filename": "single.bin"}])
            t1, result = d.wait_manifest(name)
            cpu = d.cpu() - cpu0
            item = result["items"][0]
            assert item["verified"] and item["sha256"] == sha, item
            res["daemon"].append(t1 - t0)
            res["daemon_cpu"].append(cpu)
            d.clean()
            self.settler.cleaned()
            # B: curl -o
            self.timed("curl -o")
            wall, cpu, _ = run_proc(["curl", "-sS", "--fail", "-o", str(out), url])
            res["curl"].append(wall)
            res["curl_cpu"].append(cpu)
            self.peer_clean()
            # C: curl then sha256sum
            self.timed("curl + sha256sum")
            w1, c1, _ = run_proc(["curl", "-sS", "--fail", "-o", str(out), url])
            t = time.perf_counter()
            check = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True)
            w2 = time.perf_counter() - t
            assert check.stdout.split()[0] == sha
            res["naive"].append(w1 + w2)
            res["naive_cpu"].append(c1 + w2)   # sha256sum is CPU-bound on a cached file
            self.peer_clean()
            # D: aria2c -x1 with the checksum
            self.timed("aria2c -x1 --checksum")
            wall, cpu, _ = run_proc(["aria2c", "-q", "-x1", "-s1", "--allow-overwrite=true", "--auto-file-renaming=false",
                                     "--check-integrity=true", f"--checksum=sha-256={sha}",
                                     "-d", str(self.peer_dir), "-o", "single.bin", url])
            res["aria"].append(wall)
            res["aria_cpu"].append(cpu)
            self.peer_clean()
        self.stop_daemon(d)
        res["size"] = size
        self.results["single"] = res

    # -- parallel -------------------------------------------------------------------------------
    def parallel(self):
        n, size = self.p["par_n"], self.p["par_size"]
        rels = [f"par-{size // MiB}MiB/p{i}.bin" for i in range(n)]
        shas = [self.files.ensure(rel, size) for rel in rels]
        self.files.save()
        urls = [self.nginx.url(rel) for rel in rels]
        d = self.daemon("parallel", workers=4)
        warm([self.files.path(rel) for rel in rels])
        self.peer_clean()
        d.clean()
        res = {k: [] for k in ("daemon", "daemon_cpu", "curl4", "curl4_cpu", "aria", "aria_cpu")}
        for rep in range(self.args.reps):
            log(f"parallel {n} x {size / MiB:.0f} MiB, repetition {rep + 1}/{self.args.reps}")
            name = d.next_name("parallel")
            self.timed("daemon workers 4")
            cpu0 = d.cpu()
            t0 = time.perf_counter()
            d.drop(name, [{"url": u, "sha256": s, "filename": Path(u).name} for u, s in zip(urls, shas)])
            t1, result = d.wait_manifest(name)
            assert all(i["verified"] for i in result["items"]) and len(result["items"]) == n
            res["daemon"].append(t1 - t0)
            res["daemon_cpu"].append(d.cpu() - cpu0)
            d.clean()
            self.settler.cleaned()

            self.timed("4 curls")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(lambda u: run_proc(["curl", "-sS", "--fail", "-o",
                                                         str(self.peer_dir / Path(u).name), u]), urls))
            res["curl4"].append(time.perf_counter() - t0)
            res["curl4_cpu"].append(sum(r[1] for r in runs))
            self.peer_clean()

            self.timed("aria2c -j4 --checksum")
            listing = self.peer_dir / "list.txt"
            listing.write_text("".join(f"{u}\n  out={Path(u).name}\n  checksum=sha-256={s}\n" for u, s in zip(urls, shas)))
            wall, cpu, _ = run_proc(["aria2c", "-q", "-j4", "-x1", "-s1", "--allow-overwrite=true",
                                     "--auto-file-renaming=false", "--check-integrity=true",
                                     "-d", str(self.peer_dir), "-i", str(listing)])
            res["aria"].append(wall)
            res["aria_cpu"].append(cpu)
            self.peer_clean()
        self.stop_daemon(d)
        res["bytes"] = n * size
        self.results["parallel"] = res

    # -- throttle -------------------------------------------------------------------------------
    def throttle(self):
        size, shared = self.p["thr_size"], self.p["thr_shared"]
        cap = self.p["thr_rate_bps"]
        rel = f"throttle-{size // MiB}MiB.bin"
        shared_rels = [f"throttle-{shared // MiB}MiB-{c}.bin" for c in "ab"]
        sha = self.files.ensure(rel, size)
        shas = [self.files.ensure(r, shared) for r in shared_rels]
        self.files.save()
        url = self.nginx.url(rel)
        d = self.daemon("throttle", workers=4, throttle=self.p["thr_rate"])
        warm([self.files.path(r) for r in [rel] + shared_rels])
        self.peer_clean()
        d.clean()
        res = {k: [] for k in ("daemon_steady", "daemon_avg", "daemon_wall", "curl_steady", "curl_avg", "curl_wall",
                               "shared_steady", "shared_avg", "shared_share")}
        for rep in range(self.args.reps):
            log(f"throttle {self.p['thr_rate']} on {size / MiB:.0f} MiB, repetition {rep + 1}/{self.args.reps}")
            name = d.next_name("throttle")
            self.timed("daemon")
            target = d.downloads / "throttle.bin"
            sampler = SizeSampler([[target.with_name("throttle.bin.part"), target]])
            sampler.start()
            t0 = time.perf_counter()
            d.drop(name, [{"url": url, "sha256": sha, "filename": "throttle.bin"}])
            t1, result = d.wait_manifest(name, poll=0.01)
            sampler.halt.set()
            sampler.join()
            assert result["items"][0]["verified"]
            rate, _ = steady_rate(sampler.samples[0], size)
            res["daemon_steady"].append(rate)
            res["daemon_avg"].append(size / (t1 - t0))
            res["daemon_wall"].append(t1 - t0)
            d.clean()
            self.settler.cleaned()

            self.timed(f"curl --limit-rate {cap}")
            out = self.peer_dir / "throttle.bin"
            sampler = SizeSampler([[out]])
            sampler.start()
            wall, _, _ = run_proc(["curl", "-sS", "--fail", "--limit-rate", str(cap), "-o", str(out), url])
            sampler.halt.set()
            sampler.join()
            rate, _ = steady_rate(sampler.samples[0], size)
            res["curl_steady"].append(rate)
            res["curl_avg"].append(size / wall)
            res["curl_wall"].append(wall)
            self.peer_clean()

            name = d.next_name("shared")
            self.timed("daemon, 2 downloads sharing the cap")
            paths = [d.downloads / f"throttle-{c}.bin" for c in "ab"]
            sampler = SizeSampler([[p.with_name(p.name + ".part"), p] for p in paths])
            sampler.start()
            t0 = time.perf_counter()
            d.drop(name, [{"url": self.nginx.url(r), "sha256": s, "filename": f"throttle-{c}.bin"}
                          for c, r, s in zip("ab", shared_rels, shas)])
            t1, result = d.wait_manifest(name, poll=0.01)
            sampler.halt.set()
            sampler.join()
            # per-download rates over the window where both were running (after 1 s)
            ends = []
            for samples in sampler.samples:
                complete = [t for t, s in samples if s >= shared]
                ends.append(complete[0] if complete else samples[-1][0])
            starts = [next(t for t, s in samples if s > 0) for samples in sampler.samples]
            lo, hi = max(starts) + 1.0, min(ends) - 0.05
            rates = []
            for samples in sampler.samples:
                window = [(t, s) for t, s in samples if lo <= t <= hi]
                rates.append((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 2 else None)
            if None not in rates:
                res["shared_steady"].append(sum(rates))
                res["shared_share"].append(min(rates) / sum(rates))
            res["shared_avg"].append(2 * shared / (t1 - t0))
            d.clean()
            self.settler.cleaned()
        self.stop_daemon(d)
        res.update(cap=cap, size=size)
        self.results["throttle"] = res

    # -- ingest ---------------------------------------------------------------------------------
    def small_files(self, n):
        rels = [f"small/s{i:05d}.bin" for i in range(n)]
        shas = [self.files.ensure(rel, self.p["small_size"]) for rel in rels]
        self.files.save()
        return rels, shas

    def ingest(self):
        n = self.p["ingest_n"]
        rels, shas = self.small_files(n)
        urls = [self.nginx.url(rel) for rel in rels]
        d = self.daemon("ingest", workers=4)
        warm([self.files.path(rel) for rel in rels])
        self.peer_clean()
        d.clean()
        res = {k: [] for k in ("daemon", "daemon_cpu", "aria", "curlz")}
        for rep in range(self.args.reps):
            log(f"ingest {n} manifests of one {self.p['small_size']} B file, repetition {rep + 1}/{self.args.reps}")
            self.timed("daemon")
            prefix = f"ing{rep}"
            bodies = [json.dumps({"items": [{"url": u, "sha256": s, "filename": Path(u).name}]})
                      for u, s in zip(urls, shas)]
            cpu0 = d.cpu()
            t0 = time.perf_counter()
            for i, body in enumerate(bodies):
                tmp = d.inbox / f".{prefix}-{i:05d}.json.tmp"
                tmp.write_text(body)
                os.replace(tmp, d.inbox / f"{prefix}-{i:05d}.json")
            deadline = time.monotonic() + 600
            while True:
                done = sum(1 for e in os.scandir(d.done) if e.name.endswith(".result.json"))
                if done >= n:
                    break
                if any(os.scandir(d.failed)):
                    raise RuntimeError("ingest: a manifest failed: " + next(os.scandir(d.failed)).name)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest: only {done}/{n} done after 600 s")
                time.sleep(0.02)
            res["daemon"].append(time.perf_counter() - t0)
            res["daemon_cpu"].append(d.cpu() - cpu0)
            d.clean()
            self.settler.cleaned()

            self.timed("aria2c -j4 --checksum")
            listing = self.peer_dir / "list.txt"
            listing.write_text("".join(f"{u}\n  out={Path(u).name}\n  checksum=sha-256={s}\n" for u, s in zip(urls, shas)))
            wall, _, _ = run_proc(["aria2c", "-q", "-j4", "-x1", "-s1", "--allow-overwrite=true",
                                   "--auto-file-renaming=false", "--check-integrity=true",
                                   "-d", str(self.peer_dir), "-i", str(listing)])
            res["aria"].append(wall)
            self.peer_clean()

            self.timed("curl -Z --parallel-max 4")
            config = self.peer_dir / "curl.cfg"
            config.write_text("".join(f'url = "{u}"\noutput = "{self.peer_dir / Path(u).name}"\n' for u in urls))
            wall, _, _ = run_proc(["curl", "-sS", "--fail", "-Z", "--parallel-max", "4", "-K", str(config)])
            res["curlz"].append(wall)
            self.peer_clean()
        self.stop_daemon(d)
        res["n"] = n
        self.results["ingest"] = res

    # -- memory and CPU -------------------------------------------------------------------------
    def memory(self):
        sizes = self.p["mem_sizes"]
        rels = {size: blob(size) for size in sizes}
        shas = {size: self.files.ensure(rel, size) for size, rel in rels.items()}
        self.files.save()
        d = self.daemon("memory", workers=2)
        warm([self.files.path(rel) for rel in rels.values()])
        self.peer_clean()
        d.clean()
        time.sleep(1.0)
        res = {"idle_rss": d.proc_status("VmRSS"), "startup_hwm": d.proc_status("VmHWM")}
        for size in sizes:
            res.update({f"{size}_hwm": [], f"{size}_rss": [], f"{size}_cpu": [], f"{size}_wall": [],
                        f"{size}_curl_rss": [], f"{size}_curl_cpu": []})
        for rep in range(self.args.reps):
            for size in sizes:
                rel = rels[size]
                log(f"memory/CPU {size / MiB:.0f} MiB, repetition {rep + 1}/{self.args.reps}")
                name = d.next_name("mem")
                self.timed(f"daemon {size / MiB:.0f} MiB")
                reset = d.reset_peak()
                sampler = RssSampler(d.pid)
                sampler.start()
                cpu0 = d.cpu()
                t0 = time.perf_counter()
                d.drop(name, [{"url": self.nginx.url(rel), "sha256": shas[size], "filename": "mem.bin"}])
                t1, result = d.wait_manifest(name)
                cpu = d.cpu() - cpu0
                sampler.halt.set()
                sampler.join()
                assert result["items"][0]["verified"]
                res[f"{size}_hwm"].append(d.proc_status("VmHWM") if reset else None)
                res[f"{size}_rss"].append(sampler.peak)
                res[f"{size}_cpu"].append(cpu)
                res[f"{size}_wall"].append(t1 - t0)
                d.clean()
                self.settler.cleaned()
                self.timed(f"curl -o {size / MiB:.0f} MiB")
                _, cpu, rss = run_proc(["curl", "-sS", "--fail", "-o", str(self.peer_dir / "m.bin"), self.nginx.url(rel)])
                res[f"{size}_curl_rss"].append(rss)
                res[f"{size}_curl_cpu"].append(cpu)
                self.peer_clean()
        res["final_hwm"] = d.proc_status("VmHWM")
        self.stop_daemon(d)
        res["sizes"] = sizes
        self.results["memory"] = res

    # -- API under load -------------------------------------------------------------------------
    def api(self):
        rows = self.p["api_rows"]
        rels, _ = self.small_files(min(rows, 1000))
        load_rel = blob(self.p["api_load"])
        self.files.ensure(load_rel, self.p["api_load"])
        self.files.save()
        d = self.daemon("api", workers=4)
        res = {**{key: [] for key in API_KEYS}, "per_rep": [], "active": []}
        # Fill: `rows` real downloads of 1 KiB files, POSTed in batches of 500 and run to completion.
        # Each item has its own URL (a query string on one of the 1,000 small files) and no sha256,
        # so none is a duplicate of another (the daemon links duplicates instead of downloading).
        log(f"api: filling the database with {rows} completed downloads through POST /api/batch")
        t0 = time.perf_counter()
        for start in range(0, rows, 500):
            items = [{"url": self.nginx.url(rels[i % len(rels)]) + f"?n={i}", "filename": f"f{i:05d}.bin",
                      "subdir": f"fill/{i // 1000:02d}"} for i in range(start, min(rows, start + 500))]
            code, body = d.post("/api/batch", {"items": items})
            if code != 202:
                raise RuntimeError(f"POST /api/batch answered {code}: {body}")
        t_post = time.perf_counter() - t0
        while True:
            counts = d.status()["counts"]
            if counts.get("completed", 0) + counts.get("failed", 0) >= rows:
                break
            time.sleep(0.25)
        if counts.get("failed"):
            raise RuntimeError(f"api: {counts['failed']} fill downloads failed")
        res["fill"] = (t_post, time.perf_counter() - t0)
        log(f"  filled: POSTs {t_post:.1f} s, all completed after {res['fill'][1]:.1f} s")
        unlink_all(d.downloads / "fill")
        warm([self.files.path(load_rel)])
        load_url = self.nginx.url(load_rel)
        posted = 0

        def top_up(active):
            nonlocal posted
            while active < 4:
                posted += 1
                d.post("/api/download", {"url": f"{load_url}?load={posted}", "filename": f"load-{posted}.bin",
                                         "subdir": "load"})
                active += 1

        n = self.p["api_requests"]
        for rep in range(self.args.reps):
            log(f"api: {n} x GET /api/status and {n} x GET /api/downloads?limit=50 while 4 downloads run, "
                f"repetition {rep + 1}/{self.args.reps}")
            self.timed("API under load")
            top_up(0)
            conn = d.conn()
            deadline = time.monotonic() + 30
            while d.status()["counts"].get("downloading", 0) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            lat = {key: [] for key in API_KEYS}
            for i in range(4 * n):
                which = API_KEYS[i % 4]
                path = "/api/status" if which.startswith("status") else "/api/downloads?limit=50"
                t = time.perf_counter()
                # keep-alive (a browser) and a new connection per request (curl, the CLI)
                code, body = d.get(path, None if which.endswith("_new") else conn)
                lat[which].append(time.perf_counter() - t)
                if code != 200:
                    raise RuntimeError(f"{path} answered {code}")
                if which == "status_new":
                    data = json.loads(body)
                    active = data["counts"].get("downloading", 0) + data["counts"].get("queued", 0)
                    res["active"].append(data["counts"].get("downloading", 0))
                    if active < 4:
                        top_up(active)
                time.sleep(max(0.0, 0.025 - (time.perf_counter() - t)))  # <= 40 requests/s
            conn.close()
            # let the running downloads end, then remove them
            for state in ("queued", "downloading"):
                listing = json.loads(d.get(f"/api/downloads?state={state}&limit=1000")[1])
                for dl in listing["items"]:
                    d.post(f"/api/downloads/{dl['id']}/cancel", {})
            time.sleep(0.5)
            unlink_all(d.downloads / "load")
            self.settler.cleaned()
            for key in API_KEYS:
                res[key] += lat[key]
            res["per_rep"].append({k: pct(v, 99) for k, v in lat.items()})
        res["rows"] = rows
        total = json.loads(d.get("/api/downloads?limit=1")[1])["total"]
        res["total_rows"] = total
        self.stop_daemon(d)
        self.results["api"] = res

    # -- run everything ---------------------------------------------------------------------------
    def run(self, only):
        for name in SCENARIOS:
            if name in only:
                log(f"== {name}")
                getattr(self, name)()

    def stop_all(self):
        for d in list(self.daemons):
            try:
                d.stop()
            except Exception:  # noqa: BLE001
                pass
        self.daemons.clear()
        with _lock:
            for proc in list(_children):
                if proc.poll() is None:
                    try:
                        proc.kill()
                    except OSError:
                        pass
        self.nginx.stop()


def blob(size):
    """The served file of `size` random bytes shared by the single, memory and API scenarios."""
    return f"blob-{size // MiB}MiB.bin"


def pct(values, p):
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def ratio_list(peers, daemons):
    """Per-repetition speed ratios peer_time / daemon_time (> 1: the daemon is faster)."""
    return [p / d for p, d in zip(peers, daemons)]


def ok(flag):
    return "yes" if flag else "**no**"


def mb_s(nbytes, seconds):
    return nbytes / seconds / MB


def report(b, args):
    r = b.results
    rows = []   # scenario, daemon, peer, ratio, target, met

    def rr(values):
        m, lo, hi = med(values)
        return m, (f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ({lo:.2f}–{hi:.2f})")

    if "single" in r:
        s = r["single"]
        size = s["size"]
        dm = med(s["daemon"])[0]
        dtext = f"{fmt_range(s['daemon'])}, {mb_s(size, dm):.0f} MB/s"
        label = f"single {size / MiB:.0f} MiB"
        for key, name, goal in (("curl", "`curl -o`", 0.75), ("naive", "`curl -o` then `sha256sum`", 2.2),
                                ("aria", "`aria2c -x1 --checksum`", 2.0)):
            m, text = rr(ratio_list(s[key], s["daemon"]))
            rows.append((label, dtext, f"{name}: {fmt_range(s[key])}, {mb_s(size, med(s[key])[0]):.0f} MB/s",
                         text, f"≥ {goal}", ok(m >= goal)))
    if "parallel" in r:
        s = r["parallel"]
        nbytes = s["bytes"]
        dm = med(s["daemon"])[0]
        dtext = f"{fmt_range(s['daemon'])}, {mb_s(nbytes, dm):.0f} MB/s"
        label = f"parallel {b.p['par_n']} × {b.p['par_size'] / MiB:.0f} MiB, workers 4"
        for key, name, goal in (("curl4", "4 `curl -o` at a time", 0.75), ("aria", "`aria2c -j4` with checksums", 3.5)):
            m, text = rr(ratio_list(s[key], s["daemon"]))
            rows.append((label, dtext, f"{name}: {fmt_range(s[key])}, {mb_s(nbytes, med(s[key])[0]):.0f} MB/s",
                         text, f"≥ {goal}", ok(m >= goal)))
    if "throttle" in r:
        s = r["throttle"]
        cap = s["cap"]
        label = f"throttle \"{b.p['thr_rate']}\", {s['size'] / MiB:.0f} MiB"
        steady = [v / cap for v in s["daemon_steady"] if v]
        csteady = [v / cap for v in s["curl_steady"] if v]
        m = med(steady)[0]
        rows.append((label + ", steady (first 1 s skipped)", f"{fmt_range(steady, '× cap', 3)}",
                     f"`curl --limit-rate {cap}`: {fmt_range(csteady, '× cap', 3)}", "–", "0.98–1.02",
                     ok(m is not None and 0.98 <= m <= 1.02)))
        avg = [v / cap for v in s["daemon_avg"]]
        cavg = [v / cap for v in s["curl_avg"]]
        m = med(avg)[0]
        rows.append((label + ", average (drop → verified)", f"{fmt_range(avg, '× cap', 3)}, {fmt_range(s['daemon_wall'])}",
                     f"curl: {fmt_range(cavg, '× cap', 3)}, {fmt_range(s['curl_wall'])}", "–", "≥ 0.95",
                     ok(m is not None and m >= 0.95)))
        if s["shared_steady"]:
            agg = [v / cap for v in s["shared_steady"]]
            share = s["shared_share"]
            m_agg, m_share = med(agg)[0], med(share)[0]
            rows.append((f"throttle shared by 2 × {b.p['thr_shared'] / MiB:.0f} MiB",
                         f"sum {fmt_range(agg, '× cap', 3)}; smaller share {fmt_range(share, '', 3)}",
                         f"average {fmt_range([v / cap for v in s['shared_avg']], '× cap', 3)}", "–",
                         "sum 0.98–1.02, share ≥ 0.45",
                         ok(0.98 <= m_agg <= 1.02 and m_share >= 0.45)))
    if "ingest" in r:
        s = r["ingest"]
        m = med(s["daemon"])[0]
        label = f"ingest {s['n']} manifests × 1 KiB"
        _, text = rr(ratio_list(s["aria"], s["daemon"]))
        goal = 5.0 * s["n"] / 1000
        rows.append((label, f"{fmt_range(s['daemon'])}, CPU {fmt_range(s['daemon_cpu'])}",
                     f"`aria2c -j4 -i list` with checksums: {fmt_range(s['aria'])}", text, f"< {goal:g} s",
                     ok(m < goal)))
        _, text = rr(ratio_list(s["curlz"], s["daemon"]))
        rows.append((label, "", f"one `curl -Z --parallel-max 4`: {fmt_range(s['curlz'])}", text, "–", "–"))
    if "memory" in r:
        s = r["memory"]
        small, big = s["sizes"]

        def peak(size):
            return [max(a or 0, b or 0) for a, b in zip(s[f"{size}_hwm"], s[f"{size}_rss"])]
        p_small, p_big = peak(small), peak(big)
        m_small, m_big = med(p_small)[0], med(p_big)[0]
        for size, values in ((small, p_small), (big, p_big)):
            m = med(values)[0]
            rows.append((f"peak RSS, {size / MiB:.0f} MiB file", fmt_range(values, "MiB", 1, 1 / MiB),
                         f"`curl -o`: {fmt_range(s[f'{size}_curl_rss'], 'MiB', 1, 1 / MiB)}", "–", "< 100 MiB",
                         ok(m < 100 * MiB)))
        growth = m_big / m_small
        rows.append((f"peak RSS {big / GiB:g} GiB / {small / GiB:g} GiB", f"{growth:.3f}", "", "–", "≤ 1.02",
                     ok(growth <= 1.02)))
        for size in sizes_for_cpu(s, b):
            per = [c / (size / GiB) for c in s[f"{size}_cpu"]]
            cper = [c / (size / GiB) for c in s[f"{size}_curl_cpu"]]
            rows.append((f"CPU per GiB, {size / MiB:.0f} MiB file", fmt_range(per, "s/GiB"),
                         f"`curl -o` (no hash): {fmt_range(cper, 's/GiB')}", "–", "≤ 2.0 s/GiB",
                         ok(med(per)[0] <= 2.0)))
    if "single" in r:
        s = r["single"]
        per = [c / (s["size"] / GiB) for c in s["daemon_cpu"]]
        cper = [c / (s["size"] / GiB) for c in s["curl_cpu"]]
        rows.append((f"CPU per GiB, single {s['size'] / MiB:.0f} MiB", fmt_range(per, "s/GiB"),
                     f"`curl -o`: {fmt_range(cper, 's/GiB')}", "–", "≤ 2.0 s/GiB", ok(med(per)[0] <= 2.0)))
    if "api" in r:
        s = r["api"]
        for key in API_KEYS:
            path = "GET /api/status" if key.startswith("status") else "GET /api/downloads?limit=50"
            how = "new connection each" if key.endswith("_new") else "keep-alive"
            p50, p99 = pct(s[key], 50), pct(s[key], 99)
            per = [x[key] for x in s["per_rep"]]
            rows.append((f"{path} ({how}), {s['total_rows']} rows, 4 downloads running",
                         f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                         f"(per-rep p99 {fmt_range(per, 'ms', 1, 1000)}; n = {len(s[key])})",
                         "", "–", "p99 < 50 ms", ok(p99 < 0.050)))
    table = ["| scenario | daemon | peer | ratio (peer time / daemon time) | target | met |",
             "|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(table)


def sizes_for_cpu(s, b):
    return list(s["sizes"])


def versions():
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    sys.path.insert(0, str(ROOT))
    try:
        from daemon import __version__ as daemon_version
    except Exception:  # noqa: BLE001
        daemon_version = "?"
    try:
        import requests
        requests_version = requests.__version__
    except ImportError:
        requests_version = "?"
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "daemon"], capture_output=True,
                           text=True).stdout.strip()
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "civitai-daemon": f"{daemon_version} (git {commit}{', daemon/ modified' if dirty else ''})",
        "python": platform.python_version(), "requests": requests_version,
        "nginx": Nginx.version(), "curl": first_line(["curl", "--version"]).split()[1],
        "aria2": first_line(["aria2c", "--version"]).split()[-1],
        "sha256sum": first_line(["sha256sum", "--version"]).split()[-1],
        "kernel": platform.release(), "cpu": f"{os.cpu_count()} × {cpu}",
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB",
    }


def details(b):
    """The raw figures behind the table."""
    lines = []
    r = b.results
    for name, res in r.items():
        lines.append(f"- **{name}**: " + "; ".join(
            f"{k} = [{', '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in vals)}]"
            if isinstance(vals, list) and vals and not isinstance(vals[0], dict) else f"{k} = {vals}"
            for k, vals in res.items() if k not in API_KEYS + ["active"]))
    if "api" in r:
        a = r["api"]
        maxima = "; ".join(f"{k} max {max(a[k]) * 1000:.1f} ms" for k in API_KEYS)
        lines.append(f"- **api**: fill of {a['rows']} downloads: POSTs {a['fill'][0]:.1f} s, all completed after "
                     f"{a['fill'][1]:.1f} s; downloads running at each status sample: "
                     f"median {statistics.median(a['active']) if a['active'] else 0}, "
                     f"min {min(a['active'], default=0)}; {maxima}")
    return "\n".join(lines)


KEEP = "<!-- Everything below this line is written by hand and kept by bench/run.py. -->"


def write_results(b, args, table, started, elapsed):
    v = versions()
    busy = [rec[1] for rec in b.settler.records]
    loads = [rec[2] for rec in b.settler.records]
    flagged = sum(1 for x in busy if x > b.settler.busy_limit)
    kind = "quick smoke run" if args.quick else ("full run" if set(args.only) == set(SCENARIOS) else
                                                 "partial run: " + ", ".join(args.only))
    text = [f"# Benchmark results ({kind})", "",
            f"`{' '.join(['uv run python bench/run.py'] + sys.argv[1:])}`", "",
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, took {elapsed / 60:.1f} min; "
            f"{args.reps} repetition(s) per scenario, interleaved (daemon, peer, peer, … each repetition), "
            f"settle {b.settler.settle:g} s between runs, medians with (min–max)",
            f"- machine: {v['cpu']}, {v['memory']} RAM, kernel {v['kernel']}",
            f"- versions: civitai-daemon {v['civitai-daemon']}, Python {v['python']}, requests {v['requests']}, "
            f"nginx {v['nginx']}, curl {v['curl']}, aria2 {v['aria2']}, coreutils sha256sum {v['sha256sum']}",
            f"- load at the start of the {len(busy)} timed runs: CPU busy median {statistics.median(busy) * 100:.0f} % "
            f"(max {max(busy) * 100:.0f} %), 1-min loadavg median {statistics.median(loads):.2f} (max {max(loads):.2f}); "
            f"{flagged} run(s) started above {b.settler.busy_limit * 100:.0f} % busy after waiting up to "
            f"{b.settler.max_wait:g} s" + (" — **the machine was shared**: treat absolute numbers with care, "
                                           "compare same-run ratios" if flagged or statistics.median(loads) > os.cpu_count() else ""),
            "", table, "", "## Raw figures", "", details(b), ""]
    path = Path(args.write) if args.write else (BENCH / "RESULTS.md" if not args.quick and set(args.only) == set(SCENARIOS)
                                                else WORK / ("RESULTS-quick.md" if args.quick else "RESULTS-partial.md"))
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP in old:
            kept = old[old.index(KEEP):]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n" + (kept or KEEP + "\n"))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small files and 1 repetition: a smoke test")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--settle", type=float, help="seconds between one run's cleanup and the next start (default 4)")
    parser.add_argument("--max-wait", type=float, default=15.0,
                        help="longest wait for the machine to be < 15%% busy before each timed run (default 15 s)")
    parser.add_argument("--write", help="where to write the Markdown report (default bench/RESULTS.md for a full "
                                        "run, else bench/work/RESULTS-quick.md / RESULTS-partial.md)")
    args = parser.parse_args()
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    prof = QUICK if args.quick else FULL
    args.reps = args.reps or prof["reps"]
    if not args.quick and args.reps < 3:
        log("note: fewer than 3 repetitions; the targets ask for medians of at least 3")

    ensure_tools()
    WORK.mkdir(parents=True, exist_ok=True)
    b = Bench(args, prof)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    atexit.register(b.stop_all)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    try:
        b.nginx.start()
        b.run(args.only)
    except KeyboardInterrupt:
        log("interrupted; stopping nginx and the daemons")
        b.stop_all()
        return 130
    finally:
        b.stop_all()
    table = report(b, args)
    path = write_results(b, args, table, started, time.monotonic() - t0)
    print()
    print(table)
    print()
    log(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
