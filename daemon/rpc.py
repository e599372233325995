"""aria2's JSON-RPC methods over the queue (SPEC §13): the protocol core, no web server.

A gid is the download id as 16 hex digits (`0000000000000011` is download
17): every download has one, also those from manifests or the REST API, so
AriaNg shows the whole queue, and no mapping table can drift. What a client
sent as `dir`/`out` is kept in `rpc_tasks` and echoed back, because clients
find their task again by comparing paths (ComfyUI-Manager matches
`files[].path` against `dir + out`).
"""
import inspect
import logging
import posixpath
import re
from pathlib import Path

from . import __version__, events
from .errors import InvalidTransition, ManifestError, NotFound
from .manifest import parse_items
from .models import Download, RpcTask, db
from .rpcdirs import RpcPathError, build_map, target_subdir
from .states import ENDED, Status

log = logging.getLogger("daemon.rpc")

ARIA2_VERSION = "1.37.0"  # the aria2 interface level spoken; getVersion also names the daemon
MAX_LIST = 10_000
STATUS = {Status.QUEUED: "waiting", Status.DOWNLOADING: "active", Status.PAUSED: "paused",
          Status.COMPLETED: "complete", Status.FAILED: "error", Status.CANCELLED: "removed"}
NOTIFICATIONS = {events.DOWNLOAD_STARTED: "aria2.onDownloadStart", events.DOWNLOAD_PAUSED: "aria2.onDownloadPause",
                 events.DOWNLOAD_CANCELLED: "aria2.onDownloadStop",
                 events.DOWNLOAD_COMPLETED: "aria2.onDownloadComplete", events.DOWNLOAD_FAILED: "aria2.onDownloadError"}
NO_TOKEN = ("system.listMethods", "system.listNotifications")
_GID = re.compile(r"^[0-9a-fA-F]{16}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_WAITING = (Status.QUEUED.value, Status.PAUSED.value)
_STOPPED = tuple(s.value for s in ENDED)


class RpcError(Exception):
    """An aria2 error answer: `{"code": …, "message": …}`."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code
        self.message = message


def _unauthorized(token):
    """aria2's "Unauthorized", plus what to do; the secret sent is never echoed."""
    if token is None:
        return ('Unauthorized: no secret was sent; pass "token:<api_token>" as the first parameter '
                "(the client's rpc secret setting)")
    return ("Unauthorized: the secret sent is not this daemon's api_token (or viewer_token for reads); "
            'pass "token:<api_token>" as the first parameter')


def gid_of(download_id):
    return f"{download_id:016x}"


def id_of(gid):
    if not isinstance(gid, str) or not _GID.match(gid) or int(gid, 16) == 0:
        raise RpcError(f"GID {str(gid)[:40]!r} is not valid: expected 16 hex digits")
    return int(gid, 16)


def notification(event):
    """The aria2 notification for a bus event, or None when aria2 has none for it."""
    method = NOTIFICATIONS.get(event.name)
    download_id = event.data.get("id") if isinstance(event.data, dict) else None
    if method is None or not isinstance(download_id, int) or "count" in event.data:
        return None
    return {"jsonrpc": "2.0", "method": method, "params": [{"gid": gid_of(download_id)}]}


def _checksum(value):
    algo, _, digest = str(value).partition("=")
    if algo.strip().lower() not in ("sha-256", "sha256"):
        return None  # md5, sha-1 …: accepted and ignored (the daemon verifies SHA256 only)
    if not _SHA256.match(digest.strip()):
        raise RpcError(f"checksum {str(value)[:80]!r}: expected sha-256=<64 hex digits>")
    return digest.strip().lower()


class Aria2Rpc:
    """Dispatches aria2 method calls; `role_for(token or None)` says 'admin', 'viewer' or None (refused)."""

    def __init__(self, settings, queue, progress):
        self.settings = settings
        self.queue = queue
        self.progress = progress
        self.download_dir = Path(settings.download_dir).resolve()
        self.entries = build_map(settings.rpc_dir_map, self.download_dir)
        self.reads = {
            "aria2.tellStatus": self.tell_status, "aria2.tellActive": self.tell_active,
            "aria2.tellWaiting": self.tell_waiting, "aria2.tellStopped": self.tell_stopped,
            "aria2.getFiles": self.get_files, "aria2.getUris": self.get_uris,
            "aria2.getGlobalStat": self.get_global_stat, "aria2.getVersion": self.get_version,
            "aria2.getOption": self.get_option, "aria2.getGlobalOption": self.get_global_option,
            "aria2.getSessionInfo": lambda: {"sessionId": f"{id(self):016x}"[-16:]},
        }
        self.writes = {
            "aria2.addUri": self.add_uri, "aria2.remove": self.remove, "aria2.forceRemove": self.remove,
            "aria2.pause": self.pause, "aria2.forcePause": self.pause, "aria2.unpause": self.unpause,
            "aria2.pauseAll": self.pause_all, "aria2.forcePauseAll": self.pause_all,
            "aria2.unpauseAll": self.unpause_all,
            "aria2.removeDownloadResult": self.remove_download_result,
            "aria2.purgeDownloadResult": self.purge_download_result,
            "aria2.changeOption": lambda gid, options=None: self._row(gid) and "OK",
            "aria2.changeGlobalOption": lambda options=None: "OK",
        }
        self.methods = sorted([*self.reads, *self.writes, "system.multicall", *NO_TOKEN])

    # -- dispatch ----------------------------------------------------------------
    def answer(self, message, role_for):
        """The response object for one request object (never raises)."""
        request_id = message.get("id") if isinstance(message, dict) else None
        try:
            if not isinstance(message, dict) or not isinstance(message.get("method"), str):
                raise RpcError("invalid request: expected {\"jsonrpc\": \"2.0\", \"method\": …, \"params\": […]}",
                               -32600)
            result = self.call(message["method"], message.get("params", []), role_for)
            return {"jsonrpc": "2.0", "id": request_id, "result": result}
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}

    def call(self, method, params, role_for):
        if not isinstance(params, list):
            raise RpcError("params must be a list", -32602)
        if method in NO_TOKEN:
            return self.methods if method == "system.listMethods" else sorted(NOTIFICATIONS.values())
        if method == "system.multicall":
            return self._multicall(params, role_for)
        token = None
        if params and isinstance(params[0], str) and params[0].startswith("token:"):
            token, params = params[0][len("token:"):], params[1:]
        handler = self.reads.get(method) or self.writes.get(method)
        if handler is None:
            raise RpcError(f"No such method: {method[:80]}", -32601)
        role = role_for(token)
        if role is None:
            raise RpcError(_unauthorized(token))
        if method in self.writes and role != "admin":
            raise RpcError("Unauthorized: this token is read-only (viewer_token); use the api_token to change things")
        try:
            inspect.signature(handler).bind(*params)
        except TypeError:
            raise RpcError(f"{method}: wrong number of parameters ({len(params)})", -32602) from None
        try:
            return handler(*params)
        except NotFound:
            raise RpcError(f"GID {params[0] if params else ''} is not found") from None

    def _multicall(self, params, role_for):
        if len(params) != 1 or not isinstance(params[0], list):
            raise RpcError("system.multicall takes one list of {\"methodName\", \"params\"}", -32602)
        results = []
        for entry in params[0]:
            try:
                if not isinstance(entry, dict) or not isinstance(entry.get("methodName"), str):
                    raise RpcError("each call needs methodName and params", -32602)
                if entry["methodName"] == "system.multicall":
                    raise RpcError("system.multicall cannot be nested", -32602)
                results.append([self.call(entry["methodName"], entry.get("params", []), role_for)])
            except RpcError as exc:
                results.append({"code": exc.code, "message": exc.message})
        return results

    # -- views ----------------------------------------------------------------------
    def _tasks(self, rows):
        ids = [r.id for r in rows]
        if not ids:
            return {}
        return {t.download_id: t for t in RpcTask.select().where(RpcTask.download.in_(ids))}

    def _row(self, gid):
        with db.connection_context():
            row = Download.get_or_none(Download.id == id_of(gid))
        if row is None:
            raise RpcError(f"GID {gid} is not found")
        return row

    def _status(self, row, task, keys=None):
        state = Status(row.state)
        live = self.progress.get(row.id) if self.progress and state == Status.DOWNLOADING else None
        done = live["bytes"] if live else (row.bytes or 0)
        total = (live or {}).get("total") or row.total or (done if state == Status.COMPLETED else 0)
        name = row.filename or (Path(row.path).name if row.path else None)
        if task is not None and task.dir is not None:
            folder = task.dir
        elif row.path:
            folder = str(Path(row.path).parent)
        else:
            folder = str(self.download_dir / (row.subdir or ""))
        out = task.out if task is not None and task.out else name
        path = posixpath.join(folder, out) if out else ""
        uris = [{"uri": row.url, "status": "used"}] if row.url else []
        status = {
            "gid": gid_of(row.id), "status": STATUS[state], "totalLength": str(total or 0),
            "completedLength": str(done), "uploadLength": "0", "downloadSpeed": str(int(live["speed"]) if live else 0),
            "uploadSpeed": "0", "connections": str((live or {}).get("connections", 1) if live else 0),
            "numPieces": "1" if total else "0", "pieceLength": str(total or 1048576), "dir": folder,
            "files": [{"index": "1", "path": path, "length": str(total or 0), "completedLength": str(done),
                       "selected": "true", "uris": uris}],
        }
        if state == Status.COMPLETED:
            status["errorCode"] = "0"
        elif state == Status.FAILED:
            status["errorCode"] = "1"
            status["errorMessage"] = row.error or "failed"
        if keys:
            status = {k: v for k, v in status.items() if k in keys}
        return status

    def _statuses(self, query, keys):
        with db.connection_context():
            rows = list(query)
            tasks = self._tasks(rows)
        return [self._status(r, tasks.get(r.id), keys) for r in rows]

    @staticmethod
    def _window(query, ascending, descending, offset, num):
        if isinstance(offset, bool) or not isinstance(offset, int) or isinstance(num, bool) or not isinstance(num, int):
            raise RpcError("offset and num must be integers", -32602)
        num = max(0, min(num, MAX_LIST))
        if offset >= 0:
            return query.order_by(*ascending).offset(offset).limit(num)
        return query.order_by(*descending).offset(-offset - 1).limit(num)  # aria2: from the end, reversed

    def tell_status(self, gid, keys=None):
        row = self._row(gid)
        with db.connection_context():
            task = RpcTask.get_or_none(RpcTask.download == row.id)
        return self._status(row, task, keys)

    def tell_active(self, keys=None):
        return self._statuses(Download.select().where(Download.state == Status.DOWNLOADING.value)
                              .order_by(Download.started_at, Download.id).limit(MAX_LIST), keys)

    def tell_waiting(self, offset, num, keys=None):
        query = Download.select().where(Download.state.in_(_WAITING))
        return self._statuses(self._window(query, (Download.priority.desc(), Download.id),
                                           (Download.priority, Download.id.desc()), offset, num), keys)

    def tell_stopped(self, offset, num, keys=None):
        hidden = RpcTask.select(RpcTask.download).where(RpcTask.hidden == True)  # noqa: E712 (SQL)
        query = Download.select().where(Download.state.in_(_STOPPED) & Download.id.not_in(hidden))
        return self._statuses(self._window(query, (Download.finished_at, Download.id),
                                           (Download.finished_at.desc(), Download.id.desc()), offset, num), keys)

    def get_files(self, gid):
        return self.tell_status(gid, ["files"])["files"]

    def get_uris(self, gid):
        return self.tell_status(gid, ["files"])["files"][0]["uris"]

    def get_global_stat(self):
        counts = self.queue.counts()
        hidden = RpcTask.select(RpcTask.download).where(RpcTask.hidden == True)  # noqa: E712 (SQL)
        with db.connection_context():
            shown = Download.select().where(Download.state.in_(_STOPPED) & Download.id.not_in(hidden)).count()
        speed = sum(item["speed"] for item in self.progress.snapshot()) if self.progress else 0
        return {"downloadSpeed": str(int(speed)), "uploadSpeed": "0",
                "numActive": str(counts.get("downloading", 0)),
                "numWaiting": str(counts.get("queued", 0) + counts.get("paused", 0)),
                "numStopped": str(min(shown, MAX_LIST)), "numStoppedTotal": str(sum(counts.get(s, 0) for s in _STOPPED))}

    @staticmethod
    def get_version():
        return {"version": ARIA2_VERSION, "enabledFeatures": ["HTTPS", "Message Digest"],
                "civitai-daemon": __version__}

    def get_option(self, gid):
        row = self._row(gid)
        status = self.tell_status(gid, ["dir"])
        options = {"dir": status["dir"]}
        with db.connection_context():
            task = RpcTask.get_or_none(RpcTask.download == row.id)
        if task is not None and task.out:
            options["out"] = task.out
        elif row.filename:
            options["out"] = row.filename
        if row.expected_sha256:
            options["checksum"] = f"sha-256={row.expected_sha256}"
        return options

    def get_global_option(self):
        return {"dir": str(self.download_dir), "max-concurrent-downloads": str(self.settings.workers),
                "max-overall-download-limit": str(self.settings.throttle), "max-tries": str(self.settings.retries + 1),
                "timeout": str(int(self.settings.timeout)), "continue": "true", "check-integrity": "true"}

    # -- changes --------------------------------------------------------------------
    def add_uri(self, uris, options=None, position=None):
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise RpcError("addUri takes a list of URIs first, e.g. [\"https://…\"]", -32602)
        if options is not None and not isinstance(options, dict):
            raise RpcError("options must be an object", -32602)
        options = options or {}
        try:
            subdir, filename = target_subdir(options.get("dir"), options.get("out"), self.entries, self.download_dir)
        except RpcPathError as exc:
            raise RpcError(str(exc)) from None
        raw = {"url": uris[0]}  # further URIs are mirrors of the same file in aria2: the first is enough here
        if filename:
            raw["filename"] = filename
        if subdir is not None:
            raw["subdir"] = subdir
        if options.get("checksum") is not None:
            digest = _checksum(options["checksum"])
            if digest:
                raw["sha256"] = digest
        try:
            items = parse_items(raw)
        except ManifestError as exc:
            raise RpcError("; ".join(p.replace("items[0].", "") for p in exc.problems)) from None
        download_id = self.queue.enqueue(items)[0]
        with db.connection_context():
            RpcTask.insert(download=download_id, dir=options.get("dir"), out=options.get("out")).execute()
        log.info("download %s: added over JSON-RPC (dir %r, out %r)", download_id, options.get("dir"),
                 options.get("out"))
        return gid_of(download_id)

    def _act(self, gid, action, verb):
        download_id = id_of(gid)
        try:
            self.queue.action(download_id, action)
        except InvalidTransition as exc:
            raise RpcError(f"GID {gid} cannot be {verb}: {exc}") from None
        return gid

    def remove(self, gid):
        return self._act(gid, "cancel", "removed")

    def pause(self, gid):
        return self._act(gid, "pause", "paused")

    def unpause(self, gid):
        return self._act(gid, "resume", "unpaused")

    def _each(self, states, action):
        with db.connection_context():
            ids = [r.id for r in Download.select(Download.id).where(Download.state.in_(states))]
        for download_id in ids:
            try:
                self.queue.action(download_id, action)
            except (InvalidTransition, NotFound):  # it moved on meanwhile
                pass
        return "OK"

    def pause_all(self):
        return self._each((Status.QUEUED.value, Status.DOWNLOADING.value), "pause")

    def unpause_all(self):
        return self._each((Status.PAUSED.value,), "resume")

    def _hide(self, ids):
        with db.connection_context():
            with db.atomic():
                for download_id in ids:
                    (RpcTask.insert(download=download_id, hidden=True)
                     .on_conflict(conflict_target=[RpcTask.download], update={RpcTask.hidden: True}).execute())

    def remove_download_result(self, gid):
        row = self._row(gid)
        if row.state not in _STOPPED:
            raise RpcError(f"Could not remove download result of GID#{gid}: it is still {STATUS[Status(row.state)]}")
        self._hide([row.id])
        return "OK"

    def purge_download_result(self):
        with db.connection_context():
            ids = [r.id for r in Download.select(Download.id).where(Download.state.in_(_STOPPED))]
        self._hide(ids)
        return "OK"

