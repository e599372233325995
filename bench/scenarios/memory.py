"""Peak RSS and CPU seconds of the daemon for a 1 GiB and a 4 GiB file (interleaved), curl -o alongside."""
import time

from harness import MiB
from harness.measure import log, run_proc
from harness.servers import blob, warm

from .common import curl, daemon_manifest


def memory(b):
    sizes = b.p["mem_sizes"]
    rels = {size: blob(size) for size in sizes}
    shas = {size: b.files.ensure(rel, size) for size, rel in rels.items()}
    b.files.save()
    d = b.daemon("memory", workers=2)
    warm([b.files.path(rel) for rel in rels.values()])
    b.peer_clean()
    d.clean()
    time.sleep(1.0)
    res = {"idle_rss": d.proc_status("VmRSS"), "startup_hwm": d.proc_status("VmHWM")}
    for size in sizes:
        res.update({f"{size}_peak": [], f"{size}_cpu": [], f"{size}_wall": [],
                    f"{size}_curl_rss": [], f"{size}_curl_cpu": []})
    for rep in range(b.args.reps):
        for size in sizes:
            url = b.nginx.url(rels[size])
            log(f"memory/CPU {size / MiB:.0f} MiB, repetition {rep + 1}/{b.args.reps}")
            run = daemon_manifest(b, d, "mem", [{"url": url, "sha256": shas[size], "filename": "mem.bin"}],
                                  label=f"daemon {size / MiB:.0f} MiB", rss=True)
            res[f"{size}_peak"].append(run["rss"])
            res[f"{size}_cpu"].append(run["cpu"])
            res[f"{size}_wall"].append(run["wall"])
            b.timed(f"curl -o {size / MiB:.0f} MiB")
            _, cpu, rss = run_proc(curl(b.peer_dir / "m.bin", url))
            res[f"{size}_curl_rss"].append(rss)
            res[f"{size}_curl_cpu"].append(cpu)
            b.peer_clean()
    res["final_hwm"] = d.proc_status("VmHWM")
    b.stop_daemon(d)
    res["sizes"] = sizes
    return res
