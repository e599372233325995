"""Intake: 1,000 one-file manifests dropped at once, against aria2c -i and curl -Z on the same 1,000 files."""
import json
import os
import time
from pathlib import Path

from harness.measure import log, run_proc
from harness.servers import warm

from .common import aria2_list, aria2c, curl_config


def small_files(b, n):
    """n small served files (the ingest and API scenarios share them) and their SHA256."""
    rels = [f"small/s{i:05d}.bin" for i in range(n)]
    shas = [b.files.ensure(rel, b.p["small_size"]) for rel in rels]
    b.files.save()
    return rels, shas


def _wait_results(d, n, timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        done = sum(1 for e in os.scandir(d.done) if e.name.endswith(".result.json"))
        if done >= n:
            return
        if any(os.scandir(d.failed)):
            raise RuntimeError("ingest: a manifest failed: " + next(os.scandir(d.failed)).name)
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest: only {done}/{n} done after {timeout} s")
        time.sleep(0.02)


def ingest(b):
    """Time from the first rename into inbox/ until all n result files are in done/."""
    n = b.p["ingest_n"]
    rels, shas = small_files(b, n)
    urls = [b.nginx.url(rel) for rel in rels]
    d = b.daemon("ingest", workers=4)
    warm([b.files.path(rel) for rel in rels])
    b.peer_clean()
    d.clean()
    res = {k: [] for k in ("daemon", "daemon_cpu", "aria", "curlz")}
    for rep in range(b.args.reps):
        log(f"ingest {n} manifests of one {b.p['small_size']} B file, repetition {rep + 1}/{b.args.reps}")
        bodies = [json.dumps({"items": [{"url": u, "sha256": s, "filename": Path(u).name}]})
                  for u, s in zip(urls, shas)]
        b.timed("daemon")
        cpu0 = d.cpu()
        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            d.write_manifest(f"ing{rep}-{i:05d}", body)
        _wait_results(d, n)
        res["daemon"].append(time.perf_counter() - t0)
        res["daemon_cpu"].append(d.cpu() - cpu0)
        d.clean()
        b.settler.cleaned()

        b.timed("aria2c -j4 -i --checksum")
        listing = aria2_list(b.peer_dir / "list.txt", urls, shas)
        wall, _, _ = run_proc(aria2c(b.peer_dir, "-j4", "-x1", "-s1", "--check-integrity=true", "-i", str(listing)))
        res["aria"].append(wall)
        b.peer_clean()

        b.timed("curl -Z --parallel-max 4")
        config = curl_config(b.peer_dir / "curl.cfg", urls, b.peer_dir)
        wall, _, _ = run_proc(["curl", "-sS", "--fail", "-Z", "--parallel-max", "4", "-K", str(config)])
        res["curlz"].append(wall)
        b.peer_clean()
    b.stop_daemon(d)
    res["n"] = n
    return res
