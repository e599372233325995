"""Whole-file transfers: one big file, several at once, and one from a host that caps each connection."""
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import MiB
from harness.measure import log, run_proc
from harness.servers import warm

from .common import aria2_list, aria2c, curl, daemon_manifest, one_file


def single(b):
    """One 1 GiB file: the daemon (workers 2) vs curl -o, curl + sha256sum, aria2c -x1 --checksum."""
    size = b.p["single"]
    sha, url, d = one_file(b, "single", size, workers=2)
    res = {k: [] for k in ("daemon", "daemon_cpu", "curl", "curl_cpu", "naive", "naive_cpu", "aria", "aria_cpu")}
    out = b.peer_dir / "single.bin"
    for rep in range(b.args.reps):
        log(f"single {size / MiB:.0f} MiB, repetition {rep + 1}/{b.args.reps}")
        run = daemon_manifest(b, d, "single", [{"url": url, "sha256": sha, "filename": "single.bin"}])
        res["daemon"].append(run["wall"])
        res["daemon_cpu"].append(run["cpu"])

        b.timed("curl -o")
        wall, cpu, _ = run_proc(curl(out, url))
        res["curl"].append(wall)
        res["curl_cpu"].append(cpu)
        b.peer_clean()

        b.timed("curl + sha256sum")
        w1, c1, _ = run_proc(curl(out, url))
        w2, c2, _ = run_proc(f"sha256sum {out} | grep -q ^{sha}", shell=True)
        res["naive"].append(w1 + w2)
        res["naive_cpu"].append(c1 + c2)
        b.peer_clean()

        b.timed("aria2c -x1 --checksum")
        wall, cpu, _ = run_proc(aria2c(b.peer_dir, "-x1", "-s1", "--check-integrity=true",
                                       f"--checksum=sha-256={sha}", "-o", "single.bin", url))
        res["aria"].append(wall)
        res["aria_cpu"].append(cpu)
        b.peer_clean()
    b.stop_daemon(d)
    res["size"] = size
    return res


def parallel(b):
    """8 × 128 MiB in one manifest, workers 4: vs 4 curls at a time, aria2c -j4 with checksums."""
    n, size = b.p["par_n"], b.p["par_size"]
    rels = [f"par-{size // MiB}MiB/p{i}.bin" for i in range(n)]
    shas = [b.files.ensure(rel, size) for rel in rels]
    b.files.save()
    urls = [b.nginx.url(rel) for rel in rels]
    d = b.daemon("parallel", workers=4)
    warm([b.files.path(rel) for rel in rels])
    b.peer_clean()
    d.clean()
    res = {k: [] for k in ("daemon", "daemon_cpu", "curl4", "curl4_cpu", "aria", "aria_cpu")}
    for rep in range(b.args.reps):
        log(f"parallel {n} x {size / MiB:.0f} MiB, repetition {rep + 1}/{b.args.reps}")
        run = daemon_manifest(b, d, "parallel", [{"url": u, "sha256": s, "filename": Path(u).name}
                                                 for u, s in zip(urls, shas)], label="daemon workers 4")
        res["daemon"].append(run["wall"])
        res["daemon_cpu"].append(run["cpu"])

        b.timed("4 curls")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda u: run_proc(curl(b.peer_dir / Path(u).name, u)), urls))
        res["curl4"].append(time.perf_counter() - t0)
        res["curl4_cpu"].append(sum(r[1] for r in runs))
        b.peer_clean()

        b.timed("aria2c -j4 --checksum")
        listing = aria2_list(b.peer_dir / "list.txt", urls, shas)
        wall, cpu, _ = run_proc(aria2c(b.peer_dir, "-j4", "-x1", "-s1", "--check-integrity=true", "-i", str(listing)))
        res["aria"].append(wall)
        res["aria_cpu"].append(cpu)
        b.peer_clean()
    b.stop_daemon(d)
    res["bytes"] = n * size
    return res


def capped(b):
    """1 GiB from a host capping each connection (nginx limit_rate): daemon defaults vs aria2c -x4 -s4, curl."""
    size = b.p["capped"]
    # no workers, no connection settings: what a user who sets nothing gets
    sha, url, d = one_file(b, "capped", size, capped=True)
    res = {k: [] for k in ("daemon", "daemon_cpu", "daemon_rss", "aria", "aria_cpu", "aria_rss", "curl", "curl_cpu")}
    out = b.peer_dir / "capped.bin"
    for rep in range(b.args.reps):
        log(f"capped {size / MiB:.0f} MiB at limit_rate {b.nginx.cap} per connection, "
            f"repetition {rep + 1}/{b.args.reps}")
        run = daemon_manifest(b, d, "capped", [{"url": url, "sha256": sha, "filename": "capped.bin"}],
                              label="daemon (defaults)", poll=0.02, rss=True)
        res["daemon"].append(run["wall"])
        res["daemon_cpu"].append(run["cpu"])
        res["daemon_rss"].append(run["rss"])

        b.timed("aria2c -x4 -s4 --checksum")
        wall, cpu, rss = run_proc(aria2c(b.peer_dir, "-x4", "-s4", "--check-integrity=true",
                                         f"--checksum=sha-256={sha}", "-o", "capped.bin", url))
        res["aria"].append(wall)
        res["aria_cpu"].append(cpu)
        res["aria_rss"].append(rss)
        b.peer_clean()

        b.timed("curl (one connection)")
        wall, cpu, _ = run_proc(curl(out, url))
        res["curl"].append(wall)
        res["curl_cpu"].append(cpu)
        b.peer_clean()
    b.stop_daemon(d)
    res.update(size=size, cap=b.nginx.cap)
    return res

