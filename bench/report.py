"""The report: one table row per figure with its target, the raw figures, and RESULTS.md around them."""
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from harness import BENCH, GiB, MB, MiB, ROOT, WORK
from harness.measure import fmt_range, med, pct
from harness.servers import Nginx
from scenarios.api import API_KEYS

# Every target in one place (issue 15's speed targets, issue 13's library targets, and
# the earlier ones they did not replace). Ratios are peer time / daemon time: > 1 = the daemon is faster.
TARGETS = {
    "single_curl": 0.85, "single_naive": 3.0, "single_aria": 2.0,
    "parallel_curl4": 0.85, "parallel_aria": 3.5,
    "capped_curl": 3.5, "capped_aria": 1.0,
    "throttle_steady": (0.99, 1.01), "throttle_avg": 0.95, "shared_sum": (0.98, 1.02), "shared_share": 0.45,
    "ingest_s_per_1000": 2.0, "ingest_aria": 1.0,
    "rss_mib": 100, "rss_growth": 1.02, "cpu_s_per_gib": 1.7,
    "library_first": 0.9, "library_rescan_s_per_2000": 1.0, "library_many_s_per_20000": 5.0,
    "api_p99_s": 0.050,
}
KEEP = "<!-- Everything below this line is written by hand and kept by bench/run.py. -->"


def ok(flag):
    return "yes" if flag else "**no**"


def mb_s(nbytes, seconds):
    return nbytes / seconds / MB if seconds else 0.0


def ratios(peers, daemons):
    """Per-repetition ratios peer time / daemon time, and their median with range as text."""
    values = [p / d for p, d in zip(peers, daemons) if p and d]
    m, lo, hi = med(values)
    if m is None:
        return None, "–"
    return m, f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ({lo:.2f}–{hi:.2f})"


def _versus(rows, label, dtext, nbytes, s, key, name, goal):
    m, text = ratios(s[key], s["daemon"])
    rows.append((label, dtext, f"{name}: {fmt_range(s[key])}, {mb_s(nbytes, med(s[key])[0]):.0f} MB/s",
                 text, f"≥ {goal}", ok(m is not None and m >= goal)))


def _daemon_text(s, nbytes):
    return f"{fmt_range(s['daemon'])}, {mb_s(nbytes, med(s['daemon'])[0]):.0f} MB/s"


def _cpu_row(label, cpu, curl_cpu, size):
    per = [c / (size / GiB) for c in cpu]
    cper = [c / (size / GiB) for c in curl_cpu]
    goal = TARGETS["cpu_s_per_gib"]
    return (label, fmt_range(per, "s/GiB"), f"`curl -o`: {fmt_range(cper, 's/GiB')}", "–", f"≤ {goal} s/GiB",
            ok(med(per)[0] <= goal))


def _rss_row(label, values, peer):
    m = med(values)[0]
    goal = TARGETS["rss_mib"]
    return (label, fmt_range(values, "MiB", 1, 1 / MiB), peer, "–", f"< {goal} MiB",
            ok(m is not None and m < goal * MiB))


def single_rows(s, p, rows):
    label = f"single {s['size'] / MiB:.0f} MiB"
    dtext = _daemon_text(s, s["size"])
    for key, name in (("curl", "`curl -o`"), ("naive", "`curl -o` then `sha256sum`"),
                      ("aria", "`aria2c -x1 --checksum`")):
        _versus(rows, label, dtext, s["size"], s, key, name, TARGETS[f"single_{key}"])
    rows.append(_cpu_row(f"CPU per GiB, single {s['size'] / MiB:.0f} MiB", s["daemon_cpu"], s["curl_cpu"], s["size"]))


def parallel_rows(s, p, rows):
    label = f"parallel {p['par_n']} × {p['par_size'] / MiB:.0f} MiB, workers 4"
    dtext = _daemon_text(s, s["bytes"])
    _versus(rows, label, dtext, s["bytes"], s, "curl4", "4 `curl -o` at a time", TARGETS["parallel_curl4"])
    _versus(rows, label, dtext, s["bytes"], s, "aria", "`aria2c -j4` with checksums", TARGETS["parallel_aria"])


def capped_rows(s, p, rows):
    label = f"capped {s['size'] / MiB:.0f} MiB, nginx `limit_rate {s['cap']}` per connection, daemon defaults"
    dtext = _daemon_text(s, s["size"])
    _versus(rows, label, dtext, s["size"], s, "curl", "`curl` (one connection)", TARGETS["capped_curl"])
    _versus(rows, label, dtext, s["size"], s, "aria", "`aria2c -x4 -s4 --checksum`", TARGETS["capped_aria"])
    rows.append(_rss_row("peak RSS, capped (daemon defaults)", s["daemon_rss"],
                         f"`aria2c -x4 -s4`: {fmt_range(s['aria_rss'], 'MiB', 1, 1 / MiB)}"))


def _connections(seen):
    """How many connections a throttled download used (segmented or not), as a label suffix."""
    seen = sorted({n for n in seen or () if n})
    if not seen:
        return ""
    text = "/".join(str(n) for n in seen)
    return f" ({text} connection{'s' if seen != [1] else ''}{', segmented' if max(seen) > 1 else ''})"


def throttle_rows(s, p, rows):
    cap = s["cap"]
    label = f"throttle \"{p['thr_rate']}\", {s['size'] / MiB:.0f} MiB{_connections(s.get('daemon_connections'))}"
    lo, hi = TARGETS["throttle_steady"]
    steady = [v / cap for v in s["daemon_steady"] if v]
    m = med(steady)[0]
    rows.append((label + ", steady (first 1 s skipped)", fmt_range(steady, "× cap", 3),
                 f"`curl --limit-rate {cap}`: {fmt_range([v / cap for v in s['curl_steady'] if v], '× cap', 3)}",
                 "–", f"{lo}–{hi}", ok(m is not None and lo <= m <= hi)))
    avg = [v / cap for v in s["daemon_avg"]]
    m = med(avg)[0]
    goal = TARGETS["throttle_avg"]
    rows.append((label + ", average (drop → verified)", f"{fmt_range(avg, '× cap', 3)}, {fmt_range(s['daemon_wall'])}",
                 f"curl: {fmt_range([v / cap for v in s['curl_avg']], '× cap', 3)}, {fmt_range(s['curl_wall'])}",
                 "–", f"≥ {goal}", ok(m is not None and m >= goal)))
    if s["shared_steady"]:
        agg = [v / cap for v in s["shared_steady"]]
        share = s["shared_share"]
        (lo, hi), goal = TARGETS["shared_sum"], TARGETS["shared_share"]
        rows.append((f"throttle shared by 2 × {p['thr_shared'] / MiB:.0f} MiB{_connections(s.get('shared_connections'))}",
                     f"sum {fmt_range(agg, '× cap', 3)}; smaller share {fmt_range(share, '', 3)}",
                     f"average {fmt_range([v / cap for v in s['shared_avg']], '× cap', 3)}", "–",
                     f"sum {lo}–{hi}, share ≥ {goal}", ok(lo <= med(agg)[0] <= hi and med(share)[0] >= goal)))


def ingest_rows(s, p, rows):
    label = f"ingest {s['n']} manifests × 1 KiB"
    goal = TARGETS["ingest_s_per_1000"] * s["n"] / 1000
    m = med(s["daemon"])[0]
    _, text = ratios(s["aria"], s["daemon"])
    rows.append((label, f"{fmt_range(s['daemon'])}, CPU {fmt_range(s['daemon_cpu'])}",
                 f"`aria2c -j4 -i list` with checksums: {fmt_range(s['aria'])}", text, f"≤ {goal:g} s",
                 ok(m <= goal)))
    m, text = ratios(s["aria"], s["daemon"])
    rows.append((label + ", stretch", "", "faster than `aria2c -i`", text, f"≥ {TARGETS['ingest_aria']}",
                 ok(m is not None and m >= TARGETS["ingest_aria"])))
    _, text = ratios(s["curlz"], s["daemon"])
    rows.append((label, "", f"one `curl -Z --parallel-max 4`: {fmt_range(s['curlz'])}", text, "–", "–"))


def memory_rows(s, p, rows):
    small, big = s["sizes"]
    for size in (small, big):
        rows.append(_rss_row(f"peak RSS, {size / MiB:.0f} MiB file", s[f"{size}_peak"],
                             f"`curl -o`: {fmt_range(s[f'{size}_curl_rss'], 'MiB', 1, 1 / MiB)}"))
    growth = med(s[f"{big}_peak"])[0] / med(s[f"{small}_peak"])[0]
    rows.append((f"peak RSS {big / GiB:g} GiB / {small / GiB:g} GiB", f"{growth:.3f}", "", "–",
                 f"≤ {TARGETS['rss_growth']}", ok(growth <= TARGETS["rss_growth"])))
    for size in (small, big):
        rows.append(_cpu_row(f"CPU per GiB, {size / MiB:.0f} MiB file", s[f"{size}_cpu"], s[f"{size}_curl_cpu"], size))


def library_rows(s, p, rows):
    label = f"library first scan, {s['files']} files, {s['bytes'] / MiB:.0f} MiB"
    peer = f"`sha256sum` × `xargs -P {s['cores']}`: {fmt_range(s['peer'])}, {mb_s(s['bytes'], med(s['peer'])[0]):.0f} MB/s"
    if s.get("unavailable"):
        rows.append((label, f"not available: {s['unavailable']}", peer, "–", "–", "–"))
        return
    goal = TARGETS["library_first"]
    m, text = ratios(s["peer"], s["first"])
    rows.append((label + ", page cache", f"{fmt_range(s['first'])}, {mb_s(s['bytes'], med(s['first'])[0]):.0f} MB/s",
                 peer, text, f"≥ {goal}", ok(m is not None and m >= goal)))
    if s["cold_first"]:
        m, text = ratios(s["cold_peer"], s["cold_first"])
        rows.append((label + ", cold (caches dropped)", fmt_range(s["cold_first"]),
                     f"`sha256sum`, cold: {fmt_range(s['cold_peer'])}", text, f"≥ {goal}",
                     ok(m is not None and m >= goal)))
    goal = TARGETS["library_rescan_s_per_2000"] * s["files"] / 2000
    rows.append((f"library rescan, no change, {s['files']} files", fmt_range(s["rescan"], "s", 3), "", "–",
                 f"< {goal:g} s", ok(med(s["rescan"])[0] < goal)))
    if s["many_rescan"]:
        goal = TARGETS["library_many_s_per_20000"] * s["many"] / 20000
        rows.append((f"library rescan, no change, {s['many']} files", fmt_range(s["many_rescan"], "s", 3),
                     f"`find -printf` (stat only): {fmt_range(s['many_floor'], 's', 3)}", "–", f"< {goal:g} s",
                     ok(med(s["many_rescan"])[0] < goal)))
    rows.append(_rss_row("peak RSS, library first scan", s["first_rss"], ""))


def api_rows(s, p, rows):
    goal = TARGETS["api_p99_s"]
    for key in API_KEYS:
        path = "GET /api/status" if key.startswith("status") else "GET /api/downloads?limit=50"
        how = "new connection each" if key.endswith("_new") else "keep-alive"
        p50, p99 = pct(s[key], 50), pct(s[key], 99)
        per = [x[key] for x in s["per_rep"]]
        rows.append((f"{path} ({how}), {s['total_rows']} rows, 4 downloads running",
                     f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                     f"(per-rep p99 {fmt_range(per, 'ms', 1, 1000)}; n = {len(s[key])})",
                     "", "–", f"p99 < {goal * 1000:g} ms", ok(p99 < goal)))


ROWS = {"single": single_rows, "parallel": parallel_rows, "capped": capped_rows, "throttle": throttle_rows,
        "ingest": ingest_rows, "memory": memory_rows, "library": library_rows, "api": api_rows}


def table(results, profile):
    rows = []
    for name, res in results.items():
        ROWS[name](res, profile, rows)
    lines = ["| scenario | daemon | peer | ratio (peer time / daemon time) | target | met |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure(value):
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def details(results):
    """The raw figures behind the table."""
    lines = []
    for name, res in results.items():
        parts = []
        for key, values in res.items():
            if key in API_KEYS or key == "active":
                continue
            if isinstance(values, list) and values and not isinstance(values[0], dict):
                parts.append(f"{key} = [{', '.join(_figure(v) for v in values)}]")
            else:
                parts.append(f"{key} = {values}")
        lines.append(f"- **{name}**: " + "; ".join(parts))
    if "api" in results:
        a = results["api"]
        maxima = "; ".join(f"{k} max {max(a[k]) * 1000:.1f} ms" for k in API_KEYS)
        lines.append(f"- **api**: fill of {a['rows']} downloads: POSTs {a['fill'][0]:.1f} s, all completed after "
                     f"{a['fill'][1]:.1f} s; downloads running at each status sample: "
                     f"median {statistics.median(a['active']) if a['active'] else 0}, "
                     f"min {min(a['active'], default=0)}; {maxima}")
    return "\n".join(lines)


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
    except Exception:  # noqa: BLE001 - a broken checkout still gets its report
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


def default_path(args, all_scenarios):
    if args.write:
        return Path(args.write)
    if not args.quick and set(args.only) == set(all_scenarios):
        return BENCH / "RESULTS.md"
    return WORK / ("RESULTS-quick.md" if args.quick else "RESULTS-partial.md")


def write_results(b, args, all_scenarios, started, elapsed):
    """Write the Markdown report; the hand-written part below KEEP in an existing file survives."""
    v = versions()
    busy = [rec[1] for rec in b.settler.records] or [0.0]
    loads = [rec[2] for rec in b.settler.records] or [0.0]
    flagged = sum(1 for x in busy if x > b.settler.busy_limit)
    kind = "quick smoke run" if args.quick else ("full run" if set(args.only) == set(all_scenarios) else
                                                 "partial run: " + ", ".join(args.only))
    shared = flagged or statistics.median(loads) > os.cpu_count()
    the_table = table(b.results, b.p)
    text = [f"# Benchmark results ({kind})", "",
            f"`{' '.join(['uv run python bench/run.py'] + sys.argv[1:])}`", "",
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, took {elapsed / 60:.1f} min; "
            f"{args.reps} repetition(s) per scenario, interleaved (daemon, peer, peer, … each repetition), "
            f"settle {b.settler.settle:g} s between runs, medians with (min–max)",
            f"- machine: {v['cpu']}, {v['memory']} RAM, kernel {v['kernel']}",
            f"- versions: civitai-daemon {v['civitai-daemon']}, Python {v['python']}, requests {v['requests']}, "
            f"nginx {v['nginx']}, curl {v['curl']}, aria2 {v['aria2']}, coreutils sha256sum {v['sha256sum']}",
            f"- load at the start of the {len(b.settler.records)} timed runs: CPU busy median "
            f"{statistics.median(busy) * 100:.0f} % (max {max(busy) * 100:.0f} %), 1-min loadavg median "
            f"{statistics.median(loads):.2f} (max {max(loads):.2f}); {flagged} run(s) started above "
            f"{b.settler.busy_limit * 100:.0f} % busy after waiting up to {b.settler.max_wait:g} s"
            + (" — **the machine was shared**: treat absolute numbers with care, compare same-run ratios"
               if shared else ""),
            "", the_table, "", "## Raw figures", "", details(b.results), ""]
    path = default_path(args, all_scenarios)
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP in old:
            kept = old[old.index(KEEP):]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n" + (kept or KEEP + "\n"))
    return path, the_table
