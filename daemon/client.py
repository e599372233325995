"""The CLI commands other than `run`: a thin client of the running daemon's REST API.

Host, port and api_token come from config.yaml. Exit codes (SPEC §3): 0 success,
1 the operation failed (404, 409, 400 ... message on stderr), 2 bad usage, bad
config, missing token or the daemon is not running (one line, no traceback).
"""
import json
import os
import sys
from pathlib import Path

import requests

from .errors import ConfigError
from .http import new_session
from .scan_cli import cmd_scan
from .config import load
from .states import ACTIONS, Status

TIMEOUT = 10
CHECK_TIMEOUT = 120


class CliError(Exception):
    """Ends the command with `code` and `message` on stderr."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# -- formatting ---------------------------------------------------------------
def fmt_size(n):
    """Bytes in powers of 1000: '512 B', '12.3 kB', '45.6 MB', '1.23 GB'."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if unit == "GB" or value < 10 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def fmt_speed(bps):
    return "-" if not bps else f"{fmt_size(bps)}/s"


def fmt_duration(seconds):
    """h:mm:ss, or '-' when unknown."""
    if seconds is None:
        return "-"
    try:
        total = round(float(seconds))
    except (TypeError, ValueError, OverflowError):
        return "-"
    if total < 0:
        return "-"
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def fmt_percent(done, total):
    if not total:
        return "-"
    return f"{min(100.0, 100.0 * (done or 0) / total):.1f} %"


def shorten(text, width):
    text = " ".join(str(text).split())  # one line
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers, rows, right=()):
    """Aligned columns; indexes in `right` are right-aligned."""
    rows = [[("-" if cell is None or cell == "" else str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers)] + rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- talking to the daemon --------------------------------------------------------
class Client:
    def __init__(self, config_path):
        path = Path(config_path).absolute()
        self.config_path = path
        if not path.exists():
            raise CliError(2, f"no config at {path}; civitai-daemon is not running "
                              f"(start it with: uv run civitai-daemon run --config {path})")
        try:
            settings = load(path)
        except ConfigError as exc:
            raise CliError(2, str(exc)) from None
        self.settings = settings
        host = settings.host
        if host in ("0.0.0.0", "::", "", "*"):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.start_hint = f"start it with: uv run civitai-daemon run --config {path}"
        if settings.active_port is None:
            raise CliError(2, f"civitai-daemon is not running (no active_port in {path} yet; {self.start_hint})")
        self.base = f"http://{host}:{settings.active_port}"
        self.token = settings.api_token
        self.session = new_session()  # no proxies or .netrc for the local daemon
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method, path, body=None, params=None, timeout=TIMEOUT):
        url = self.base + path
        try:
            response = self.session.request(method, url, json=body, params=params, timeout=timeout)
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout) or "timed out" in str(exc).lower():
                raise CliError(2, f"civitai-daemon at {self.base} did not answer within {timeout} s") from None
            raise CliError(2, f"civitai-daemon is not running at {self.base} ({self.start_hint})") from None
        except requests.Timeout:
            raise CliError(1, f"civitai-daemon at {self.base} did not answer within {timeout} s") from None
        except requests.RequestException as exc:
            raise CliError(2, f"cannot talk to civitai-daemon at {self.base}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 401:
            if self.token:
                raise CliError(2, f"the daemon rejected the api_token in {self.config_path}")
            raise CliError(2, f"the daemon needs api_token: set it in {self.config_path}")
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise CliError(1, message or f"{method} {path}: HTTP {response.status_code}")
        if data is None:
            raise CliError(2, f"{self.base} does not answer like civitai-daemon (not JSON); "
                              f"is active_port in {self.config_path} right?")
        return data


# -- commands ----------------------------------------------------------------------
def _active_filenames(client, active):
    """The status's active list with file names filled in (older daemons omit them)."""
    if all(item.get("filename") for item in active):
        return active
    try:
        listing = client.call("GET", "/api/downloads", params={"state": Status.DOWNLOADING.value, "limit": 1000})
        names = {d["id"]: d.get("filename") for d in listing.get("items", [])}
    except CliError:
        names = {}
    return [dict(item, filename=item.get("filename") or names.get(item.get("id"))) for item in active]


def cmd_status(client, args, as_json):
    data = client.call("GET", "/api/status")
    if as_json:
        return data
    counts = data.get("counts", {})
    throttle = data.get("throttle")
    print(f"civitai-daemon {data.get('version', '?')} at {client.base}: up {fmt_duration(data.get('uptime'))}, "
          f"{data.get('workers', '?')} worker(s), throttle {fmt_speed(throttle) if throttle else 'none'}")
    print()
    states = data.get("states") or []  # the daemon's own list and order
    names = list(states) + [s for s in counts if s not in states]
    print(table(["STATE", "COUNT"], [[s, counts.get(s, 0)] for s in names], right={1}))
    print()
    active = _active_filenames(client, data.get("active") or [])
    if not active:
        print("no active downloads")
        return None
    rows = [[a.get("id"), shorten(a.get("filename") or "?", 50), fmt_percent(a.get("bytes"), a.get("total")),
             f"{fmt_size(a.get('bytes'))} / {fmt_size(a.get('total'))}", fmt_speed(a.get("speed")),
             fmt_duration(a.get("eta"))] for a in active]
    print(table(["ID", "FILE", "PROGRESS", "SIZE", "SPEED", "ETA"], rows, right={0, 2, 3, 4, 5}))
    return None


def _size_cell(d):
    done, total = d.get("bytes") or 0, d.get("total")
    if d.get("state") == Status.COMPLETED.value:
        return fmt_size(total or done)
    if total:
        return f"{fmt_size(done)} / {fmt_size(total)} ({fmt_percent(done, total)})"
    return fmt_size(done) if done else "-"


def _model_cell(d):
    parts = []
    name = " ".join(p for p in (d.get("model_name"), d.get("version_name")) if p)
    if name:
        parts.append(shorten(name, 40))
    ids = "/".join(str(x) for x in (d.get("modelId"), d.get("modelVersionId")) if x)
    if ids:
        parts.append(f"({ids})" if name else ids)
    return " ".join(parts) or "-"


def cmd_list(client, args, as_json):
    params = {"limit": args.limit}
    if args.state:
        states = client.call("GET", "/api/status").get("states") or []
        if args.state not in states:
            raise CliError(2, f"--state must be one of {', '.join(states)}, got {args.state!r}")
        params["state"] = args.state
    data = client.call("GET", "/api/downloads", params=params)
    if as_json:
        return data
    items = data.get("items", [])
    if not items:
        print(f"no {args.state + ' ' if args.state else ''}downloads")
        return None
    rows = [[d.get("id"), d.get("state"), _size_cell(d), shorten(d.get("filename") or d.get("url") or "?", 60),
             _model_cell(d), shorten(d["error"], 60) if d.get("error") else ""] for d in items]
    print(table(["ID", "STATE", "SIZE", "FILE", "MODEL", "ERROR"], rows, right={0, 2}))
    total = data.get("total", len(items))
    if total > len(items):
        print(f"({len(items)} of {total} shown; use --limit N for more)")
    return None


def add_body(args):
    target = args.target.strip()
    if target.isdigit():
        body = {"modelVersionId": int(target)}
    elif target.lower().startswith("urn:air:"):
        body = {"air": target}
    else:
        body = {"url": target}
    for key in ("sha256", "filename", "priority", "subdir"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = value
    return body


def cmd_add(client, args, as_json):
    data = client.call("POST", "/api/download", body=add_body(args))
    if as_json:
        return data
    print(data.get("id"))
    return None


def cmd_action(client, args, as_json):
    action = args.command
    data = client.call("POST", f"/api/downloads/{args.id}/{action}")
    if as_json:
        return data
    name = data.get("filename") or data.get("url") or ""
    print(f"download {data.get('id', args.id)} {data.get('state', action)}" + (f": {name}" if name else ""))
    return None


def cmd_retry_failed(client, args, as_json):
    data = client.call("POST", "/api/downloads/retry-failed")
    if as_json:
        return data
    print(f"{data.get('count', 0)} failed download(s) queued again" if data.get("count") else "no failed downloads")
    return None


def cmd_check_updates(client, args, as_json):
    data = client.call("POST", "/api/updates/check", timeout=CHECK_TIMEOUT)
    if as_json:
        return data
    updates = data.get("updates") or []
    problems = data.get("problems") or []
    print(f"checked {data.get('checked', 0)} model(s) in {data.get('duration', 0)} s: "
          f"{len(updates)} update(s), {len(problems)} problem(s)")
    if updates:
        rows = [[u.get("modelId"), shorten(u.get("model_name") or "?", 40), u.get("previous_version_id"),
                 f"{u.get('modelVersionId')} {shorten(u.get('version_name') or '', 30)}".strip(),
                 u.get("reason"), u.get("download_id")] for u in updates]
        print(table(["MODEL", "NAME", "FROM", "TO", "REASON", "DOWNLOAD"], rows, right={0, 2, 5}))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return None


def cmd_update_all(client, args, as_json):
    body = {"all": True}
    if args.replace:
        body["mode"] = "replace"
    data = client.call("POST", "/api/updates/apply", body=body)
    if as_json:
        return data
    ids = data.get("ids") or []
    print(f"{len(ids)} update(s) queued" + (f": downloads {', '.join(map(str, ids))}" if ids else ""))
    for skipped in data.get("skipped") or []:
        print(f"update {skipped.get('id')} not applied: {skipped.get('reason')}", file=sys.stderr)
    return None


COMMANDS = {
    "update-all": cmd_update_all,
    "scan": cmd_scan,
    "status": cmd_status,
    "list": cmd_list,
    "add": cmd_add,
    "check-updates": cmd_check_updates,
    "retry-failed": cmd_retry_failed,
    **{action: cmd_action for action in ACTIONS},
}


def main(args, config_path):
    """Run one client subcommand; returns the exit code."""
    as_json = bool(getattr(args, "json", False))
    try:
        handler = COMMANDS.get(args.command)
        if handler is None:
            raise CliError(2, f"unknown command {args.command!r}")
        client = Client(config_path)
        data = handler(client, args, as_json)
        if as_json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        sys.stdout.flush()
        return 0
    except CliError as exc:
        message = exc.message if exc.message.startswith("civitai-daemon") else f"civitai-daemon: {exc.message}"
        print(message, file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `civitai-daemon list | head`: no traceback at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("civitai-daemon: interrupted", file=sys.stderr)
        return 130
