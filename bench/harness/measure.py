"""Measuring: medians and ranges, machine load, settling between runs, child processes' wall/CPU/RSS, samplers."""
import glob
import math
import os
import statistics
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

children = []       # Popen objects to stop on exit
children_lock = threading.Lock()


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def med(values):
    """(median, min, max) of the values that are not None; (None, None, None) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt_range(values, unit="s", digits=2, scale=1.0):
    """"1.50 s (1.45–2.00)": the median with min–max (just the value for one run)."""
    m, lo, hi = med(values)
    if m is None:
        return "–"
    if len([v for v in values if v is not None]) == 1:
        return f"{m * scale:.{digits}f} {unit}".strip()
    return f"{m * scale:.{digits}f} {unit} ({lo * scale:.{digits}f}–{hi * scale:.{digits}f})".replace("  ", " ")


def pct(values, p):
    """The p-th percentile by nearest rank: the smallest value with at least p % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p * len(ordered) / 100) - 1))
    return ordered[k]


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


def proc_cpu(pid):
    """utime + stime of a running process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid, key):
    """A byte figure of /proc/PID/status (VmRSS, VmHWM), or None."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak(pid):
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_proc(cmd, shell=False, **kwargs):
    """Run a command; return (wall seconds, CPU seconds, peak RSS bytes) measured with wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, shell=shell, **kwargs)
    with children_lock:
        children.append(proc)
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
    with children_lock:
        children.remove(proc)
    if proc.returncode != 0:
        name = cmd if isinstance(cmd, str) else cmd[0]
        raise RuntimeError(f"{name} failed ({proc.returncode}): {err.strip()[:500]}")
    # wait4's rusage covers the whole tree for a shell pipeline (xargs' children included)
    return wall, usage.ru_utime + usage.ru_stime, sampler.peak or None


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


class PeakRss:
    """The peak RSS of a process over a `with` block: the larger of VmHWM (reset at entry) and VmRSS sampled every 50 ms.

    `.peak` is None when not `enabled` (then it measures nothing and costs nothing).
    """

    def __init__(self, pid, enabled=True):
        self.pid, self.enabled, self.peak = pid, enabled, None

    def __enter__(self):
        if self.enabled:
            self.reset = reset_peak(self.pid)
            self.sampler = RssSampler(self.pid)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.sampler.halt.set()
            self.sampler.join()
            hwm = proc_status(self.pid, "VmHWM") if self.reset else None
            self.peak = max(self.sampler.peak, hwm or 0)
        return False


class SizeSampler(threading.Thread):
    """Samples the bytes on disk of files every 10 ms: per file the first candidate that exists (a path,
    or a glob pattern such as the daemon's `<name>.<download id>.part`).

    Bytes on disk are min(size, allocated blocks): a segmented download writes its part out of
    order, so its size jumps to the furthest segment's end while its allocated blocks (ext4 counts
    delayed-allocation blocks too) grow with the bytes written.
    """

    def __init__(self, candidates, interval=0.01):
        super().__init__(daemon=True)
        self.candidates, self.interval = candidates, interval
        self.samples = [[] for _ in candidates]   # per file: (t, bytes)
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.perf_counter()
            for paths, samples in zip(self.candidates, self.samples):
                samples.append((t, self._bytes(paths)))
            self.halt.wait(self.interval)

    @staticmethod
    def _bytes(paths):
        for path in paths:
            found = sorted(glob.glob(str(path))) if any(c in str(path) for c in "*?[") else [path]
            for one in found:
                try:
                    st = os.stat(one)
                except OSError:
                    continue
                return min(st.st_size, st.st_blocks * 512)
        return 0


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
