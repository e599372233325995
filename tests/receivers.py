"""Small real HTTP receivers for notification tests: a webhook endpoint and a fake Telegram Bot API."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Receiver:
    """Records every POST (path, headers, raw body, time); can answer slowly or with an error status.

    `delay` seconds of silence before answering (interrupted at stop), `status` the answer's code.
    """

    def __init__(self, delay=0.0, status=200, reply=None):
        self.delay = delay
        self.status = status
        self.reply = reply or {"ok": True}
        self.posts = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = None

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.posts.append({"path": self.path, "headers": dict(self.headers.items()),
                                           "body": body, "time": time.time()})
                if receiver.delay and receiver._stopping.wait(receiver.delay):
                    return
                answer = json.dumps(receiver.reply).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self):
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def json_posts(self):
        with self._lock:
            return [json.loads(p["body"]) for p in self.posts]

    def events(self, name=None):
        """Webhook events received (optionally only those named `name`)."""
        return [e for e in self.json_posts() if name is None or e.get("event") == name]


def refused_url():
    """A loopback URL where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"
