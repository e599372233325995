"""The daemon's own rate cap: one download held at the cap, then two sharing it."""
import glob
import json
import threading
import time

from harness import MiB
from harness.measure import SizeSampler, log, run_proc, steady_rate
from harness.servers import warm

from .common import curl


class ConnectionsSeen(threading.Thread):
    """The most connections any running download reported (GET /api/downloads every 0.5 s)."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.most = d, 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(0.5):
            try:
                code, body = self.d.get("/api/downloads")
                items = json.loads(body).get("items", []) if code == 200 else []
            except (OSError, ValueError):
                continue
            self.most = max([self.most] + [i.get("connections") or 0 for i in items if i.get("state") == "downloading"])


def _sampled(b, d, prefix, items, paths, label):
    """Drop a manifest and sample the bytes on disk of `paths` (the download's part, then the final
    name) until it is done; returns (wall, samples, most connections seen)."""
    name = d.next_name(prefix)
    b.timed(label)
    sampler = SizeSampler([[p.with_name(glob.escape(p.name) + ".*.part"), p] for p in paths])
    probe = ConnectionsSeen(d)
    sampler.start()
    probe.start()
    t0 = time.perf_counter()
    d.drop(name, items)
    t1, result = d.wait_manifest(name, poll=0.01)
    sampler.halt.set()
    probe.halt.set()
    sampler.join()
    probe.join()
    if not all(i.get("verified") for i in result["items"]):
        raise RuntimeError(f"{prefix}: not every item verified")
    d.clean()
    b.settler.cleaned()
    return t1 - t0, sampler.samples, probe.most


def _shared_rates(samples, size):
    """Each download's rate over the window where both were running (after their first second)."""
    ends = []
    for series in samples:
        complete = [t for t, s in series if s >= size]
        ends.append(complete[0] if complete else series[-1][0])
    starts = [next(t for t, s in series if s > 0) for series in samples]
    lo, hi = max(starts) + 1.0, min(ends) - 0.05
    rates = []
    for series in samples:
        window = [(t, s) for t, s in series if lo <= t <= hi]
        rates.append((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 2 else None)
    return rates


def throttle(b):
    """throttle: "20MB" on a 200 MiB file vs curl --limit-rate; then 2 × 100 MiB sharing the cap."""
    size, shared = b.p["thr_size"], b.p["thr_shared"]
    cap = b.p["thr_rate_bps"]
    rel = f"throttle-{size // MiB}MiB.bin"
    shared_rels = [f"throttle-{shared // MiB}MiB-{c}.bin" for c in "ab"]
    sha = b.files.ensure(rel, size)
    shas = [b.files.ensure(r, shared) for r in shared_rels]
    b.files.save()
    url = b.nginx.url(rel)
    d = b.daemon("throttle", workers=4, throttle=b.p["thr_rate"])
    warm([b.files.path(r) for r in [rel] + shared_rels])
    b.peer_clean()
    d.clean()
    res = {k: [] for k in ("daemon_steady", "daemon_avg", "daemon_wall", "curl_steady", "curl_avg", "curl_wall",
                           "shared_steady", "shared_avg", "shared_share", "daemon_connections", "shared_connections")}
    for rep in range(b.args.reps):
        log(f"throttle {b.p['thr_rate']} on {size / MiB:.0f} MiB, repetition {rep + 1}/{b.args.reps}")
        wall, samples, most = _sampled(b, d, "throttle", [{"url": url, "sha256": sha, "filename": "throttle.bin"}],
                                 [d.downloads / "throttle.bin"], "daemon")
        res["daemon_steady"].append(steady_rate(samples[0], size)[0])
        res["daemon_avg"].append(size / wall)
        res["daemon_wall"].append(wall)
        res["daemon_connections"].append(most)

        b.timed(f"curl --limit-rate {cap}")
        out = b.peer_dir / "throttle.bin"
        sampler = SizeSampler([[out]])
        sampler.start()
        wall, _, _ = run_proc(curl(out, url, "--limit-rate", str(cap)))
        sampler.halt.set()
        sampler.join()
        res["curl_steady"].append(steady_rate(sampler.samples[0], size)[0])
        res["curl_avg"].append(size / wall)
        res["curl_wall"].append(wall)
        b.peer_clean()

        items = [{"url": b.nginx.url(r), "sha256": s, "filename": f"throttle-{c}.bin"}
                 for c, r, s in zip("ab", shared_rels, shas)]
        wall, samples, most = _sampled(b, d, "shared", items, [d.downloads / f"throttle-{c}.bin" for c in "ab"],
                                 "daemon, 2 downloads sharing the cap")
        rates = _shared_rates(samples, shared)
        if None not in rates:
            res["shared_steady"].append(sum(rates))
            res["shared_share"].append(min(rates) / sum(rates))
        res["shared_avg"].append(2 * shared / wall)
        res["shared_connections"].append(most)
    b.stop_daemon(d)
    res.update(cap=cap, size=size)
    return res
