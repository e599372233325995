"""The bottle app: REST API, WebSocket feed, GUI and health/metrics routes (SPEC §8).

Handlers run as greenlets on the hub. Every database call goes through the
hub's native thread pool (`_db`), so SQLite never blocks the hub and greenlets
never share a connection.
"""
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import bottle
from xstatic.pkg import bootstrap as xstatic_bootstrap

from .. import __version__
from ..errors import InvalidTransition, ManifestError, NotFound
from ..manifest import parse_items
from ..sidecars import read_preview
from ..states import ACTIONS, Status
from ..redact import scrub
from ..views import stored_info
from . import openapi
from .request import (ApiError, LOOPBACK, MAX_LIMIT, PREVIEW_TYPES, STATES, UPDATE_STATES, _bearer, _db, _decode,
                      _id, _int_param, _matches, _read_body, token_role)
from .jsonrpc import JsonRpcEndpoint

log = logging.getLogger("daemon.web")

STATIC = Path(__file__).parent / "static"


class WebApp:
    """Builds the bottle application around the daemon's parts."""

    def __init__(self, settings, queue, feed, status, health=None, updates=None, metrics_text=None, library=None,
                 nodes=None):
        self.settings = settings
        self.queue = queue
        self.feed = feed
        self.status = status              # callable → status dict (off-hub)
        self.health = health              # callable → (ok, problems)
        self.updates = updates            # object with list() and check_now()
        self.metrics_text = metrics_text  # callable → (bytes, content_type)
        self.library = library            # the library scanner (web/library_routes.py)
        self.nodes = nodes                # callable → the fleet's daemons (GET /api/nodes)
        self.app = bottle.Bottle()
        self._routes()
        self.jsonrpc = JsonRpcEndpoint(self, _db, _read_body, token_role)  # aria2's protocol (SPEC §13)

    # -- auth ---------------------------------------------------------------
    def _browser_problem(self, request, write):
        """Why a request without the admin token looks forged by another web site, or None.

        With no api_token anyone who can reach the port may act, which must not
        include web pages the user visits: a cross-site form can POST text/plain
        without a CORS preflight, and DNS rebinding points an attacker's host
        name at 127.0.0.1. So, tokenless only: a loopback-bound daemon answers
        only requests addressed to a loopback name, and a state change (or the
        live feed) carrying an Origin must come from the daemon's own origin.
        A request carrying the admin token is exempt (pages cannot learn it); every other request — no
        token, or only the viewer token — is checked, so setting viewer_token alone keeps the protection.
        """
        admin = self.settings.api_token
        given = _bearer(request) or request.query.get("token", "")
        if admin and given and _matches(given, admin):
            return None
        host_header = request.get_header("Host", "")
        host = urlsplit(f"//{host_header}").hostname or ""
        if self.settings.host in LOOPBACK and host not in LOOPBACK:
            return (f"refused a request addressed to {host_header[:80]!r}: the daemon listens on "
                    f"{self.settings.host}; {self._refusal_advice(given, 'use http://127.0.0.1')}")
        origin = request.get_header("Origin")
        if write and origin is not None and urlsplit(origin).netloc.lower() != host_header.lower():
            return ("refused a cross-site request (Origin does not match); "
                    + self._refusal_advice(given, "call from the daemon's own page"))
        return None

    def _refusal_advice(self, given, local_way):
        """What a refused client should do, by what it sent (never echoing the token)."""
        if not self.settings.api_token:
            return f"{local_way}, or set api_token to allow other clients"
        if not given:
            return f"no token was sent: send Authorization: Bearer <api_token>, or {local_way}"
        if token_role(self.settings, given) == "viewer":
            return f"a viewer_token is accepted here only if you {local_way}; otherwise send the api_token"
        return f"the token sent is not the api_token: send Authorization: Bearer <api_token>, or {local_way}"

    def _role(self, request, websocket=False):
        """'admin', 'viewer', or None (refused) for the request's token."""
        return token_role(self.settings, _bearer(request) or (request.query.get("token", "") if websocket else ""))

    def _guard(self, handler, write=False, websocket=False, query_token=False):
        def wrapped(*args, **kwargs):
            try:
                problem = self._browser_problem(bottle.request, write or websocket)
                if problem:
                    raise ApiError(403, problem)
                role = self._role(bottle.request, websocket or query_token)
                if role is None:
                    raise ApiError(401, "missing or wrong token: send Authorization: Bearer <api_token>")
                if write and role != "admin":
                    raise ApiError(403, "this token is read-only (viewer_token); use the api_token to change things")
                bottle.request.environ["civitai.role"] = role
                return handler(*args, **kwargs)
            except ApiError as exc:
                return self._error(exc.status, exc.message)
            except NotFound as exc:
                return self._error(404, str(exc))
            except InvalidTransition as exc:
                return self._error(409, str(exc))
            except ManifestError as exc:
                return self._error(400, "; ".join(exc.problems)[:4000])
            except RecursionError:
                return self._error(400, "body is nested too deeply")
            except bottle.HTTPResponse:
                raise
            except Exception:
                log.exception("unexpected error in %s %s", bottle.request.method, bottle.request.path)
                return self._error(500, "internal error; see logs/error.log")
        return wrapped

    @staticmethod
    def _error(status, message):
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return json.dumps({"error": message})

    def _json(self, data, status=200):
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return json.dumps(data)

    # -- routes -------------------------------------------------------------
    def _routes(self):
        app = self.app
        get = lambda path, fn: app.route(path, "GET", self._guard(fn))  # noqa: E731
        post = lambda path, fn: app.route(path, "POST", self._guard(fn, write=True))  # noqa: E731

        # Relative Locations: the daemon may sit behind a proxy under a sub-path.
        app.route("/", "GET", lambda: _redirect("gui"))
        app.route("/gui", "GET", self.gui)
        app.route("/gui/", "GET", lambda: _redirect("../gui"))
        app.route("/static/bootstrap/<path:path>", "GET", self.bootstrap_file)
        app.route("/static/<path:path>", "GET", self.static_file)
        app.route("/healthz", "GET", self.healthz)
        get("/metrics", self.prometheus)  # the API's token and Host rules; /healthz alone is open
        get("/api/status", self.api_status)
        post("/api/download", self.api_download)
        post("/api/batch", self.api_batch)
        get("/api/downloads", self.api_downloads)
        # Not matching retry-failed keeps bottle's 405 Allow header to the methods that route really has.
        get("/api/downloads/<download_id:re:(?!retry-failed$)[^/]+>", self.api_download_one)
        get("/api/downloads/<download_id>/info", self.api_download_info)
        # <img> tags cannot send headers: this one read-only route also takes ?token=.
        app.route("/api/downloads/<download_id>/preview", "GET", self._guard(self.api_preview, query_token=True))
        post("/api/downloads/retry-failed", self.api_retry_failed)
        post("/api/downloads/<download_id>/<action:re:pause|resume|cancel|retry>", self.api_action)
        get("/api/completed", self.api_completed)
        get("/api/metrics", self.api_metrics)
        get("/api/manifests", self.api_manifests)
        get("/api/updates", self.api_updates)
        post("/api/updates/check", self.api_updates_check)
        get("/api/nodes", self.api_nodes)
        get("/api/openapi.json", lambda: self._json(openapi.document(__version__)))
        app.route("/ws/downloads", "GET", self._guard(self.ws_downloads, websocket=True))
        if self.library is not None:
            from . import library_routes
            library_routes.install(self, self.library)
        for code in (400, 404, 405, 413, 500):
            app.error(code)(self._bottle_error)

    def _bottle_error(self, error):
        bottle.response.content_type = "application/json"
        body = error.body if isinstance(error.body, str) else ""
        if error.status_code == 404:
            message = body if body and not body.startswith("Not found:") else "no such route"
        elif error.status_code == 405:
            message = f"method {bottle.request.method} not allowed here"
        elif error.status_code >= 500:
            message = "internal error; see logs/error.log"
        else:
            message = body or "bad request"
        return json.dumps({"error": message})

    def pre_start_hook(self, handler):
        """gevent-websocket asks this before upgrading: True = serve as plain HTTP (no upgrade).

        Only /ws/ routes upgrade, and only with a valid token, so a refused
        client gets a real 401 answer to its handshake instead of 101 + close.
        """
        environ = handler.environ
        if environ.get("PATH_INFO", "") == "/jsonrpc":
            return self.jsonrpc.upgrade_refused(bottle.BaseRequest(environ))
        if not environ.get("PATH_INFO", "").startswith("/ws/"):
            return True
        request = bottle.BaseRequest(environ)
        return self._browser_problem(request, True) is not None or self._role(request, websocket=True) is None

    def gui(self):
        return bottle.static_file("index.html", root=str(STATIC), mimetype="text/html; charset=utf-8")

    def static_file(self, path):
        return bottle.static_file(path, root=str(STATIC))

    def bootstrap_file(self, path):
        return bottle.static_file(path, root=xstatic_bootstrap.BASE_DIR)

    def healthz(self):
        ok, problems = self.health() if self.health else (True, [])
        if ok:
            return self._json({"ok": True})
        return self._json({"ok": False, "problems": problems}, 503)

    def prometheus(self):
        body, content_type = _db(self.metrics_text)
        bottle.response.content_type = content_type
        return body

    def api_status(self):
        status = _db(self.status)
        status["role"] = bottle.request.environ.get("civitai.role", "admin")
        return self._json(status)

    @staticmethod
    def _items_from(raw, single):
        data = _decode(raw)
        if single and not isinstance(data, dict):
            raise ApiError(400, "body must be one item object, e.g. {\"url\": \"https://…\"} or "
                                "{\"modelVersionId\": 130072}")
        if single and "items" in data:
            raise ApiError(400, "POST /api/download takes one item; send manifests to /api/batch")
        return parse_items(data)

    def api_download(self):
        items = _db(self._items_from, _read_body(), single=True)
        ids = _db(self.queue.enqueue, items)
        return self._json({"id": ids[0]}, 202)

    def api_batch(self):
        items = _db(self._items_from, _read_body(), single=False)
        ids = _db(self.queue.enqueue, items)
        return self._json({"ids": ids}, 202)

    def _page(self):
        return _int_param("limit", 50, 1, MAX_LIMIT), _int_param("offset", 0, 0, 10**12)

    def api_downloads(self):
        state = bottle.request.query.get("state") or None
        if state is not None and state not in STATES:
            raise ApiError(400, f"state must be one of {', '.join(STATES)}, got {state[:40]!r}")
        limit, offset = self._page()
        items, total = _db(self.queue.list, state=state, limit=limit, offset=offset)
        return self._json({"items": items, "total": total, "limit": limit, "offset": offset})

    def api_download_one(self, download_id):
        row = _db(self.queue.get, _id(download_id))
        return self._json(_db(self.queue.views.download, row))

    def api_download_info(self, download_id):
        info = _db(self._stored_info, _id(download_id))
        if info is None:
            raise ApiError(404, f"download {download_id} has no stored Civitai metadata (not a Civitai model, "
                                "or not resolved yet)")
        return self._json(info)

    def _stored_info(self, download_id):
        return scrub(stored_info(self.queue.get(download_id).civitai_info))

    def api_preview(self, download_id):
        found = _db(self._preview_path, _id(download_id))
        if found is None:  # none, vanished, or not a plain file under download_dir
            raise ApiError(404, f"download {download_id} has no preview image")
        data, suffix = found
        response = bottle.HTTPResponse(data, Content_Type=PREVIEW_TYPES[suffix])
        # private: the URL may carry ?token=; nosniff + CSP: a served file is only ever an image
        response.set_header("Cache-Control", "private, no-cache")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        return response

    def _preview_path(self, download_id):
        """The preview sidecar beside the download's file; the path comes from the database row only."""
        row = self.queue.get(download_id)
        if row.state != Status.COMPLETED or not row.path:
            return None
        # Updates land beside the version they replace, which may be under a library root.
        for root in (self.settings.download_dir, *self.settings.library["roots"]):
            found = read_preview(row.path, root)
            if found is not None:
                return found if found[1] in PREVIEW_TYPES else None
        return None

    def api_retry_failed(self):
        ids = _db(self.queue.retry_failed)
        return self._json({"ids": ids, "count": len(ids)})

    def api_action(self, download_id, action):
        if action not in ACTIONS:
            raise ApiError(404, f"unknown action {action[:40]!r}; use one of {', '.join(ACTIONS)}")
        return self._json(_db(self.queue.action, _id(download_id), action))

    def api_completed(self):
        limit, offset = self._page()
        items, total = _db(self.queue.list, limit=limit, offset=offset, completed_only=True)
        return self._json({"items": items, "total": total, "limit": limit, "offset": offset})

    def api_metrics(self):
        return self._json(_db(self.queue.metrics))

    def api_manifests(self):
        limit, offset = self._page()
        items, total = _db(self.queue.manifests, limit=limit, offset=offset)
        return self._json({"items": items, "total": total, "limit": limit, "offset": offset})

    def api_updates(self):
        limit, offset = self._page()
        if self.updates is None:
            return self._json({"items": [], "total": 0, "limit": limit, "offset": offset})
        state = bottle.request.query.get("state") or None
        if state is not None and state not in UPDATE_STATES:
            raise ApiError(400, f"state must be one of {', '.join(UPDATE_STATES)}, got {state[:40]!r}")
        items, total = _db(self.updates.list, limit=limit, offset=offset, state=state)
        return self._json({"items": items, "total": total, "limit": limit, "offset": offset})

    def api_nodes(self):
        items = _db(self.nodes) if self.nodes else []
        return self._json({"items": items, "total": len(items), "limit": max(1, len(items)), "offset": 0})

    def api_updates_check(self):
        if self.updates is None:
            raise ApiError(503, "the update checker is not running")
        return self._json(_db(self.updates.check_now))

    def ws_downloads(self):
        ws = bottle.request.environ.get("wsgi.websocket")
        if ws is None:
            raise ApiError(400, "this route needs a WebSocket upgrade (ws://…/ws/downloads)")
        role = bottle.request.environ.get("civitai.role", "admin")
        self.feed.serve(ws, lambda: dict(_db(self.status), role=role))
        return ""


def _redirect(location):
    return bottle.HTTPResponse(status=302, headers={"Location": location, "Content-Type": "application/json"},
                               body=json.dumps({"location": location}))
