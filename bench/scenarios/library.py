"""Library scan (SPEC §10): a generated library, first scan vs sha256sum in parallel, rescans with no change.

Drives POST /api/library/scan (202 {"scan": id}) and GET /api/library/scan (state,
files, bytes, api_calls, ...). A daemon without the library (no `library` setting,
or the route answers 404) is reported as "not available"; the peers still run.
"""
import json
import os
import time

from harness import CORES, FILES, MiB
from harness.measure import PeakRss, log, run_proc
from harness.servers import drop_caches, warm

TYPES = ("Checkpoint", "Lora", "VAE", "ControlNet", "Upscaler")


def make_library(name, n, big_every, big, small):
    """n .safetensors files of random bytes under FILES/name, in folders of 100; every `big_every`-th is `big`.

    Generated once: a `.made` file records the shape, so the next run reuses the files.
    """
    root = FILES / name
    shape = {"n": n, "big_every": big_every, "big": big, "small": small}
    made = root / ".made"
    try:
        if json.loads(made.read_text()) == shape:
            return root
    except (OSError, ValueError):
        pass
    log(f"generating library {name}: {n} files")
    for i in range(n):
        folder = root / TYPES[i % len(TYPES)] / f"set{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = big if big_every and i % big_every == 0 else small
        with open(folder / f"model-{i:05d}.safetensors", "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MiB))
                f.write(block)
                left -= len(block)
    made.write_text(json.dumps(shape))
    return root


def library_files(root):
    paths = []
    for folder, _, names in os.walk(root):
        paths += [os.path.join(folder, n) for n in names if n.endswith(".safetensors")]
    return paths


class Unavailable(Exception):
    """The daemon under test has no library scan."""


def start_daemon(b, name, root, civitai):
    try:
        return b.daemon(name, workers=2, civitai_base_url=civitai,
                        library={"roots": [str(root)], "scan_on_start": False, "rescan": "off"})
    except RuntimeError as exc:
        raise Unavailable(f"the daemon did not start with a `library` setting ({str(exc).splitlines()[-1][:200]})")


def scan(b, d, label, rss=False, timeout=1800):
    """One timed scan from POST to state done; returns {"wall", "rss", "summary"}."""
    b.timed(label)
    with PeakRss(d.pid, enabled=rss) as peak:
        t0 = time.perf_counter()
        code, body = d.post("/api/library/scan", {})
        if code in (404, 405):
            raise Unavailable(f"POST /api/library/scan answered {code}")
        if code != 202 or not isinstance(body, dict) or "scan" not in body:
            raise RuntimeError(f"POST /api/library/scan answered {code}: {body}")
        scan_id = body["scan"]
        deadline = time.monotonic() + timeout
        while True:
            code, raw = d.get("/api/library/scan")
            state = json.loads(raw) if code == 200 else {}
            if state.get("id") == scan_id and state.get("state") in ("done", "failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"scan {scan_id} not done within {timeout} s: {state}")
            time.sleep(0.01)
        wall = time.perf_counter() - t0
    if state["state"] != "done":
        raise RuntimeError(f"scan {scan_id} failed: {json.dumps(state)[:1000]}")
    summary = {k: state.get(k) for k in ("files", "bytes", "new", "changed", "identified", "unknown", "api_calls")}
    summary["errors"] = len(state.get("errors") or [])
    return {"wall": wall, "rss": peak.peak, "summary": summary}


def sha256sum_parallel(root):
    """Every model file through sha256sum, `CORES` processes at a time (xargs -P)."""
    return run_proc(f"find {root} -type f -name '*.safetensors' -print0 "
                    f"| xargs -0 -P {CORES} -n 64 sha256sum > /dev/null", shell=True)


def library(b):
    from fakeciv import FakeCivitai   # the local fake Civitai answers the bulk lookups (tests/fakeciv.py)

    p = b.p
    lib = make_library(f"library-{p['lib_n']}-{p['lib_small']}-{p['lib_big']}", p["lib_n"], 10, p["lib_big"],
                       p["lib_small"])
    many = make_library(f"library-{p['lib_many']}-{p['lib_many_size']}", p["lib_many"], 0, 0, p["lib_many_size"])
    files = library_files(lib)
    total = sum(os.path.getsize(f) for f in files)
    cold = p["lib_cold"] and os.geteuid() == 0
    fake = FakeCivitai(b.peer_dir.parent / "fakeciv").start()
    res = {k: [] for k in ("first", "first_rss", "rescan", "peer", "peer_cpu", "cold_first", "cold_peer",
                           "many_rescan", "many_floor")}
    res.update(files=len(files), bytes=total, many=p["lib_many"], cores=CORES, cold=cold, summaries=[])
    try:
        for rep in range(b.args.reps):
            log(f"library {len(files)} files, {total / MiB:.0f} MiB, repetition {rep + 1}/{b.args.reps}")
            # interleaved: the daemon's first scan and rescan, then the peer; cold the same way after
            _daemon_scans(b, lib, fake.base_url, res, rep, cold=False)
            _peer(b, lib, res, cold=False)
            if cold:
                _daemon_scans(b, lib, fake.base_url, res, rep, cold=True)
                _peer(b, lib, res, cold=True)
        _many(b, many, fake.base_url, res)
    finally:
        fake.stop()
    return res


def _daemon_scans(b, lib, civitai, res, rep, cold):
    """A fresh daemon (an empty database: a first scan), its first scan and, warm, a rescan with no change."""
    if res.get("unavailable"):
        return
    try:
        d = start_daemon(b, f"library-{'cold-' if cold else ''}{rep}", lib, civitai)
        try:
            if cold:
                drop_caches()
                res["cold_first"].append(scan(b, d, "daemon first scan (cold cache)")["wall"])
            else:
                warm(library_files(lib))
                first = scan(b, d, "daemon first scan (page cache)", rss=True)
                res["first"].append(first["wall"])
                res["first_rss"].append(first["rss"])
                res["summaries"].append(first["summary"])
                res["rescan"].append(scan(b, d, "daemon rescan, no change")["wall"])
        finally:
            b.stop_daemon(d)
    except Unavailable as exc:
        res["unavailable"] = str(exc)
        log(f"  library: not available: {exc}")
    b.settler.cleaned()


def _peer(b, lib, res, cold):
    if cold:
        drop_caches()
    else:
        warm(library_files(lib))
    b.timed(f"sha256sum, xargs -P {CORES}" + (" (cold cache)" if cold else ""))
    wall, cpu, _ = sha256sum_parallel(lib)
    res["cold_peer" if cold else "peer"].append(wall)
    if not cold:
        res["peer_cpu"].append(cpu)
    b.settler.cleaned()


def _many(b, many, civitai, res):
    """Rescans with no change of the big library (after one untimed first scan), find's stat walk as the floor."""
    if res.get("unavailable"):
        return
    log(f"library rescans of {res['many']} files")
    try:
        d = start_daemon(b, "library-many", many, civitai)
    except Unavailable as exc:
        res["unavailable"] = str(exc)
        return
    try:
        res["many_first"] = scan(b, d, f"daemon first scan of {res['many']} files")["wall"]
        for _ in range(b.args.reps):
            res["many_rescan"].append(scan(b, d, f"daemon rescan of {res['many']} files, no change")["wall"])
            b.settler.cleaned()
            b.timed("find -printf (stat every file)")
            res["many_floor"].append(run_proc(["find", str(many), "-type", "f", "-printf", "%i %s %T@\n"])[0])
            b.settler.cleaned()
    finally:
        b.stop_daemon(d)
