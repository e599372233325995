"""`POST /jsonrpc` and `WS /jsonrpc`: aria2's JSON-RPC transport and its notifications (SPEC §13).

The secret travels inside each call (`token:<secret>`), as aria2 does, so
the HTTP layer only applies the REST API's browser rules (loopback Host,
same-origin writes) when no token is configured; rpc.Aria2Rpc does the rest.
Notifications follow web/feed.py's thread model: the bus subscriber only
appends to a deque and wakes the hub through a `loop.async_()` watcher; each
WebSocket client has its own bounded outbox and sending greenlet, and one
that stops reading is dropped.
"""
import collections
import json
import logging

import bottle
import gevent
import gevent.queue
from geventwebsocket.exceptions import WebSocketError

from ..rpc import Aria2Rpc, notification

log = logging.getLogger("daemon.web.jsonrpc")

CLIENT_BACKLOG = 1000
SEND_TIMEOUT = 30.0
MAX_BATCH = 1000


def _error(message, code=1, request_id=None):
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class JsonRpcEndpoint:
    """Registers /jsonrpc on a WebApp and fans bus events out to WebSocket clients as aria2 notifications."""

    def __init__(self, web, run, read_body, token_role):
        self.web = web
        self._run, self._read_body, self._token_role = run, read_body, token_role  # web/app.py's helpers
        self.settings = web.settings
        queue = web.queue
        self.rpc = Aria2Rpc(web.settings, queue, queue.progress) if queue is not None else None
        self.clients = set()
        self._pending = collections.deque()
        self._watcher = None
        if queue is not None:
            self._watcher = gevent.get_hub().loop.async_()
            self._watcher.start(self._flush)
            queue.bus.subscribe(self._on_event)
        app = web.app
        app.route("/jsonrpc", "POST", self.post)
        app.route("/jsonrpc", "OPTIONS", self.preflight)
        app.route("/jsonrpc", "GET", self.websocket)

    def stop(self):
        for client in list(self.clients):
            client.kill(block=False)
        if self._watcher is not None:
            self._watcher.stop()

    # -- requests ---------------------------------------------------------------------
    def _role_for(self, token):
        return self._token_role(self.settings, token or "")

    def _answer(self, raw):
        """The response (dict or list) for a raw request body; runs off the hub."""
        try:
            message = json.loads(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return _error("Parse error: the body is not JSON", -32700)
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                return _error(f"a batch takes 1 to {MAX_BATCH} requests", -32600)
            return [self.rpc.answer(m, self._role_for) for m in message]
        return self.rpc.answer(message, self._role_for)

    def _cors(self):
        # A browser client (AriaNg) on another origin may call only when a token guards the RPC: the token
        # is in the body, so a page that does not know it can do nothing.
        if self.settings.api_token:
            bottle.response.set_header("Access-Control-Allow-Origin", "*")
            bottle.response.set_header("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
            bottle.response.set_header("Access-Control-Allow-Headers", "Content-Type")
            bottle.response.set_header("Access-Control-Max-Age", "1728000")

    def _send_json(self, body, status):
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return json.dumps(body)

    def _browser_problem(self, request):
        # With an api_token the secret inside each call guards it (a page cannot learn it), so AriaNg on
        # another origin or a reverse proxy's Host is fine; rpc.Aria2Rpc refuses a missing or wrong secret.
        if self.settings.api_token:
            return None
        return self.web._browser_problem(request, True)

    def post(self):
        self._cors()
        problem = self._browser_problem(bottle.request)
        if problem:
            return self._send_json(_error(problem), 403)
        try:
            raw = self._read_body()
        except Exception as exc:  # ApiError: too large (413) or an unreadable body (400)
            return self._send_json(_error(getattr(exc, "message", "bad request")), getattr(exc, "status", 413))
        try:
            body = self._run(self._answer, raw)
        except Exception:
            log.exception("JSON-RPC call failed")
            return self._send_json(_error("internal error; see logs/error.log"), 500)
        failed = isinstance(body, dict) and "error" in body
        return self._send_json(body, 400 if failed else 200)  # aria2 answers an error with 400

    def preflight(self):
        if not self.settings.api_token:
            return self._send_json(_error("cross-origin calls need api_token set (the secret then guards them)"),
                                   403)
        self._cors()
        bottle.response.status = 204
        return ""

    def upgrade_refused(self, request):
        """For the WebSocket handshake (WebApp.pre_start_hook): True = refuse. Calls carry their own token."""
        return self._browser_problem(request) is not None

    # -- WebSocket --------------------------------------------------------------------
    def websocket(self):
        ws = bottle.request.environ.get("wsgi.websocket")
        if ws is None:
            return self._send_json(_error("GET /jsonrpc needs a WebSocket upgrade (ws://…/jsonrpc); "
                                          "send calls with POST /jsonrpc"), 400)
        if self.rpc is None:
            return ""
        outbox = gevent.queue.Queue(maxsize=CLIENT_BACKLOG)
        sender = gevent.spawn(self._send_loop, ws, outbox)
        self.clients.add(sender)
        try:
            while not sender.dead:
                text = ws.receive()
                if text is None:
                    break
                body = self._run(self._answer, text)
                try:
                    outbox.put_nowait(json.dumps(body))
                except gevent.queue.Full:
                    break
        except (WebSocketError, OSError, gevent.GreenletExit):
            pass
        except Exception:
            log.exception("JSON-RPC WebSocket client failed")
        finally:
            self.clients.discard(sender)
            sender.kill(block=False)
        return ""

    @staticmethod
    def _send_loop(ws, outbox):
        try:
            while True:
                text = outbox.get()
                sent = False
                with gevent.Timeout(SEND_TIMEOUT, False):
                    ws.send(text)
                    sent = True
                if not sent:
                    break
        except (WebSocketError, OSError):
            pass
        finally:  # also when killed: closing wakes the reader blocked in receive()
            try:
                ws.close()
            except Exception:  # already gone
                pass

    # -- notifications: any thread → the hub ----------------------------------------------
    def _on_event(self, event):
        if not self.clients:  # no WebSocket client: no notification to build, no wake-up of the hub
            return
        message = notification(event)
        if message is not None:
            self._pending.append(message)
            self._watcher.send()

    def _flush(self):
        if not self.clients:
            self._pending.clear()
            return
        while self._pending:
            text = json.dumps(self._pending.popleft(), separators=(",", ":"))
            for sender in list(self.clients):
                outbox = sender.args[1]
                try:
                    outbox.put_nowait(text)
                except gevent.queue.Full:
                    log.warning("dropping a JSON-RPC WebSocket client that stopped reading")
                    self.clients.discard(sender)
                    sender.kill(block=False)
