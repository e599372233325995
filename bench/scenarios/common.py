"""What several scenarios do the same way: one timed daemon manifest, the peers' command lines."""
import time
from pathlib import Path

from harness.measure import PeakRss
from harness.servers import blob, warm


def daemon_manifest(b, d, prefix, items, label="daemon", poll=0.005, rss=False):
    """Drop one manifest into a settled machine and wait for its result.

    Returns {"wall", "cpu", "result", "rss"} (rss: the peak VmRSS sampled every 50 ms and
    the VmHWM after a reset, the larger, when asked). Every item must have been verified.
    """
    name = d.next_name(prefix)
    b.timed(label)
    with PeakRss(d.pid, enabled=rss) as peak:
        cpu0 = d.cpu()
        t0 = time.perf_counter()
        d.drop(name, items)
        t1, result = d.wait_manifest(name, poll=poll)
        cpu = d.cpu() - cpu0
    bad = [i for i in result["items"] if not i.get("verified")]
    if bad or len(result["items"]) != len(items):
        raise RuntimeError(f"{prefix}: not every item verified: {bad[:3]}")
    d.clean()
    b.settler.cleaned()
    return {"wall": t1 - t0, "cpu": cpu, "result": result, "rss": peak.peak}


def one_file(b, name, size, capped=False, **config):
    """The served blob of `size` bytes, its SHA256 and URL, and a started daemon `name` with the file warm."""
    rel = blob(size)
    sha = b.files.ensure(rel, size)
    b.files.save()
    url = b.nginx.capped_url(rel) if capped else b.nginx.url(rel)
    d = b.daemon(name, **config)
    warm([b.files.path(rel)])
    b.peer_clean()
    d.clean()
    return sha, url, d


def curl(out, url, *extra):
    return ["curl", "-sS", "--fail", *extra, "-o", str(out), url]


def aria2c(out_dir, *args):
    """aria2c quietly into out_dir, overwriting, never renaming."""
    return ["aria2c", "-q", "--allow-overwrite=true", "--auto-file-renaming=false", "-d", str(out_dir), *args]


def aria2_list(path, urls, shas):
    """An aria2c input file: each URL with its output name and checksum."""
    path.write_text("".join(f"{u}\n  out={Path(u).name}\n  checksum=sha-256={s}\n" for u, s in zip(urls, shas)))
    return path


def curl_config(path, urls, out_dir):
    """A curl -K file downloading every URL into out_dir."""
    path.write_text("".join(f'url = "{u}"\noutput = "{out_dir / Path(u).name}"\n' for u in urls))
    return path
