"""`civitai-daemon scan [PATH…]`: start a library scan (or join the running one) and show it to the end."""
import os
import sys
import time

from .library.walk import starts_for

POLL = 0.25
LINE_EVERY = 2.0


def _bar(status, width=30):
    from .client import fmt_duration, fmt_size, fmt_speed
    total = status.get("bytes") or 0
    done = status.get("bytes_done") or 0
    filled = int(width * done / total) if total else (width if status.get("files_done") else 0)
    return (f"[{'#' * filled}{'-' * (width - filled)}] {status.get('files_done', 0)}/{status.get('files', 0)} files  "
            f"{fmt_size(done)}/{fmt_size(total)}  {fmt_speed(status.get('rate'))}  "
            f"ETA {fmt_duration(status.get('eta'))}  ({status.get('phase', status.get('state'))})")


def cmd_scan(client, args, as_json):
    from .client import CliError
    paths = [os.path.abspath(p) for p in args.paths]
    try:
        starts_for(client.settings.library["roots"], paths)
    except ValueError as exc:
        raise CliError(2, str(exc)) from None
    try:
        answer = client.call("POST", "/api/library/scan", body={"paths": paths} if paths else {})
        scan_id = answer["scan"]
    except CliError as exc:
        if "already running" not in exc.message:
            raise
        scan_id = client.call("GET", "/api/library/scan").get("id")
        if not as_json:
            print(f"scan {scan_id} is already running: following it", file=sys.stderr)
    tty = sys.stdout.isatty() and not as_json
    last_line = 0.0
    while True:
        status = client.call("GET", "/api/library/scan")
        if status.get("id") != scan_id or status.get("state") != "running":
            break
        now = time.monotonic()
        if tty:
            sys.stdout.write("\r" + _bar(status) + "\033[K")
            sys.stdout.flush()
        elif not as_json and now - last_line >= LINE_EVERY:
            print(_bar(status), flush=True)
            last_line = now
        time.sleep(POLL)
    if tty:
        sys.stdout.write("\r\033[K")
    if as_json:
        return status
    print(f"scan {status.get('id')} {status.get('state')}: {status.get('files', 0)} file(s), "
          f"{status.get('new', 0)} new, {status.get('changed', 0)} changed, {status.get('missing', 0)} missing, "
          f"{status.get('identified', 0)} identified, {status.get('unknown', 0)} unknown, "
          f"{status.get('api_calls', 0)} API call(s)")
    for error in status.get("errors") or []:
        print(f"error: {error.get('path') or '-'}: {error.get('error')}", file=sys.stderr)
    if status.get("state") != "done":
        raise CliError(1, f"scan {status.get('id')} {status.get('state')}")
    return None
