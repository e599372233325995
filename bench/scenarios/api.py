"""API latency: GET /api/status and /api/downloads?limit=50 with 10,000+ rows while 4 downloads run."""
import json
import time

from harness.measure import log, pct
from harness.servers import blob, unlink_all, warm

from .ingest import small_files

API_KEYS = ["status", "downloads", "status_new", "downloads_new"]


def _fill(b, d, rels, rows):
    """`rows` real downloads of 1 KiB files, POSTed in batches of 500 and run to completion.

    Each item has its own URL (a query string on one of the small files) and no sha256,
    so none is a duplicate of another (the daemon links duplicates instead of downloading).
    """
    log(f"api: filling the database with {rows} completed downloads through POST /api/batch")
    t0 = time.perf_counter()
    for start in range(0, rows, 500):
        items = [{"url": b.nginx.url(rels[i % len(rels)]) + f"?n={i}", "filename": f"f{i:05d}.bin",
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
    log(f"  filled: POSTs {t_post:.1f} s, all completed after {time.perf_counter() - t0:.1f} s")
    unlink_all(d.downloads / "fill")
    return t_post, time.perf_counter() - t0


def api(b):
    rows = b.p["api_rows"]
    rels, _ = small_files(b, min(rows, 1000))
    load_rel = blob(b.p["api_load"])
    b.files.ensure(load_rel, b.p["api_load"])
    b.files.save()
    d = b.daemon("api", workers=4)
    res = {**{key: [] for key in API_KEYS}, "per_rep": [], "active": []}
    res["fill"] = _fill(b, d, rels, rows)
    warm([b.files.path(load_rel)])
    load_url = b.nginx.url(load_rel)
    posted = 0

    def top_up(active):
        nonlocal posted
        while active < 4:
            posted += 1
            d.post("/api/download", {"url": f"{load_url}?load={posted}", "filename": f"load-{posted}.bin",
                                     "subdir": "load"})
            active += 1

    n = b.p["api_requests"]
    for rep in range(b.args.reps):
        log(f"api: {n} x GET /api/status and {n} x GET /api/downloads?limit=50 while 4 downloads run, "
            f"repetition {rep + 1}/{b.args.reps}")
        b.timed("API under load")
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
                counts = json.loads(body)["counts"]
                active = counts.get("downloading", 0) + counts.get("queued", 0)
                res["active"].append(counts.get("downloading", 0))
                if active < 4:
                    top_up(active)
            time.sleep(max(0.0, 0.025 - (time.perf_counter() - t)))  # <= 40 requests/s
        conn.close()
        # cancel what still runs, then remove the files
        for state in ("queued", "downloading"):
            listing = json.loads(d.get(f"/api/downloads?state={state}&limit=1000")[1])
            for dl in listing["items"]:
                d.post(f"/api/downloads/{dl['id']}/cancel", {})
        time.sleep(0.5)
        unlink_all(d.downloads / "load")
        b.settler.cleaned()
        for key in API_KEYS:
            res[key] += lat[key]
        res["per_rep"].append({k: pct(v, 99) for k, v in lat.items()})
    res["rows"] = rows
    res["total_rows"] = json.loads(d.get("/api/downloads?limit=1")[1])["total"]
    b.stop_daemon(d)
    return res
