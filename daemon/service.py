"""Wiring only: build every part, start them in order, stop them in reverse.

Thread model (research/stack.md, option A): no gevent monkey patching. The
gevent WSGI server (with gevent-websocket's handler) runs in the main thread;
downloads, the inbox watcher, the webhook sender and the scheduler run in
plain OS threads. Hashing, socket reads and file writes release the GIL, so
downloads use both cores while the hub stays responsive. Threads hand events
to the hub only through a `loop.async_()` watcher (see web/feed.py), and the
hub reaches the database only through its native thread pool (web/app.py).
"""
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import types

import gevent
import gevent.event
import gevent.socket
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from . import __version__, config, database, http, logs, models, sdnotify
from .civitai import CivitaiClient, Resolver
from .errors import ConfigError
from .engines import hide_password
from .events import Bus
from .fetch import Fetcher
from .fleet import Fleet
from .http import civitai_origins
from .intake import Intake
from .library.scan import Scanner
from .replace import Replacer
from .notify import Notifier
from .progress import Progress
from .queue import Queue
from .redact import Sealer
from .settings import is_postgres_url
from .spool import Spool
from .states import ACTION_SOURCES, ACTIONS, Status
from .throttle import Throttle
from .updates import UpdateChecker
from .views import Views
from .watcher import Watcher
from .webui import WebUiRefresher
from .web.app import WebApp
from .web.feed import Feed
from .web import prom
from .worker import WorkerPool

log = logging.getLogger("daemon.service")

PORT_RANGE = range(8100, 8201)


def bind(host, port):
    # A gevent socket: the server's accept() must yield to the hub, never block it.
    sock = gevent.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY: pywsgi writes headers and body separately, and Nagle
    # plus the client's delayed ACK otherwise adds 40 ms to every keep-alive response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(256)
    return sock


def choose_socket(settings):
    """Bind the configured port, or a random free one in 8100-8200 written back to config.yaml."""
    if settings.active_port is not None:
        try:
            return bind(settings.host, settings.active_port)
        except OSError as exc:
            raise ConfigError(f"port {settings.active_port} on {settings.host} is taken ({exc.strerror}); stop the "
                              "program using it, choose another active_port, or set active_port: null in "
                              f"{settings.config_path} to pick a free port automatically") from None
    ports = list(PORT_RANGE)
    random.shuffle(ports)
    for port in ports:
        try:
            sock = bind(settings.host, port)
        except OSError as exc:
            if exc.errno in (99, 49):  # cannot assign the address at all
                raise ConfigError(f"host {settings.host!r} is not an address of this machine; fix 'host' in "
                                  f"{settings.config_path}") from None
            continue
        config.write_active_port(settings.config_path, port)
        settings.active_port = port
        return sock
    raise ConfigError("no free port in 8100-8200; set active_port in config.yaml to a free port")


def build_core(settings, sleep=None):
    """The parts that carry a download from the queue to disk, without the web side or threads started
    (the daemon runs them; the in-process tests call `pool.step()` on them directly)."""
    core = types.SimpleNamespace(bus=Bus(), progress=Progress())
    settings.node = settings.node or socket.gethostname()  # fleet mode: the default name of this daemon
    # A fleet's daemons share the key that seals URL secrets through the shared download_dir (a file
    # beside the database is impossible there; the key must not live in the database it protects).
    shared = is_postgres_url(str(settings.database))
    key_base = settings.download_dir / ".fleet" if shared else settings.database
    if shared:
        settings.download_dir.mkdir(parents=True, exist_ok=True)
    core.queue = Queue(core.bus, Views(core.progress), Sealer.for_database(key_base), node=settings.node,
                       lease=settings.lease)
    core.api_stop = threading.Event()  # ends the Civitai client's retry waits at shutdown
    core.client = CivitaiClient(settings, core.api_stop)
    core.intake = Intake(settings, core.client)  # manifests, ComfyUI workflows, generated PNGs (SPEC §13)
    core.spool = Spool(settings, core.queue, core.bus, parse=core.intake.parse)
    core.throttle = Throttle(settings.throttle)
    # Each token only to its own origins (scheme, host, port): never to a storage host a download
    # redirects to (Civitai's R2, Hugging Face's cdn-lfs), which the fetcher asks for each hop.
    credentials = http.civitai_credentials(settings.civitai_base_url, settings.civitai_token).grant(
        http.Origins([settings.huggingface_base_url]),
        {"Authorization": f"Bearer {settings.huggingface_token}"} if settings.huggingface_token else {})
    core.fetcher = Fetcher(settings, core.throttle, civitai_origins(settings.civitai_base_url), credentials)
    core.resolver = Resolver(settings, core.client)
    core.pool = WorkerPool(settings, core.queue, core.fetcher, core.resolver, core.spool, core.progress, core.bus,
                           sleep=sleep)
    return core


class Daemon:
    """The running daemon: every part, started and stopped in order."""

    def __init__(self, settings):
        self.settings = settings
        self.started = time.time()
        self.stopping = False

    def build(self):
        s = self.settings
        logs.setup(s.logs_dir, s.log_level, s.secrets())
        database.open_database(s.database, hide_password(str(s.database)))
        self.sock = choose_socket(s)
        for folder in (s.download_dir,):
            folder.mkdir(parents=True, exist_ok=True)
        core = build_core(s)
        self.bus, self.progress, self.queue, self.spool = core.bus, core.progress, core.queue, core.spool
        self.throttle, self.fetcher, self.api_stop = core.throttle, core.fetcher, core.api_stop
        self.client, self.resolver, self.pool, self.intake = core.client, core.resolver, core.pool, core.intake
        self.watcher = Watcher(s.inbox_dir, self.spool, parse=self.intake.parse)
        self.notifier = Notifier(s, self.bus)
        self.webui = WebUiRefresher(s, self.bus)  # A1111/Forge refresh after downloads (SPEC §13)
        self.fleet = Fleet(s, self.queue, self.spool, self.throttle, self.pool.active_ids)
        self.updates = UpdateChecker(s, self.client, self.queue, self.bus, fleet=self.fleet)
        self.library = Scanner(s, self.client, self.bus)
        self.replacer = Replacer(s, self.bus)
        if s.library["rescan"] == "daily":
            self.updates.before_scheduled = self.library.run_blocking  # not before an on-demand check
        self.feed = Feed(self.bus, self.progress)
        self.web = WebApp(s, self.queue, self.feed, self.status, health=self.health, updates=self.updates,
                          metrics_text=lambda: prom.render(self.queue, self.progress), library=self.library,
                          nodes=self.fleet.nodes)
        self.server = WSGIServer(self.sock, self.web.app, handler_class=WebSocketHandler, log=None,
                                 error_log=logging.getLogger("daemon.web.server"))
        self.server.pre_start_hook = self.web.pre_start_hook  # WebSocket auth before the upgrade (401, not 101)

    def status(self):
        return {"version": __version__, "uptime": round(time.time() - self.started, 1),
                "workers": self.settings.workers, "throttle": self.settings.throttle,
                "counts": self.queue.counts(), "active": self.progress.snapshot(),
                # The GUI and the CLI take these lists from here instead of keeping copies.
                "states": [s.value for s in Status], "actions": {a: sorted(s.value for s in ACTION_SOURCES[a])
                                                                  for a in ACTIONS}}

    def health(self):
        problems = []
        if not self.watcher.healthy():
            problems.append("the inbox watcher is not running")
        if not self.pool.healthy():
            problems.append("a download worker has stopped")
        try:
            gevent.get_hub().threadpool.apply(lambda: models.db.execute_sql("SELECT 1").fetchone())
        except Exception as exc:
            problems.append(f"database: {exc}")
        return not problems, problems

    def run(self):
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        s = self.settings
        recovered = self.queue.recover()
        if recovered:
            log.info("recovered %d interrupted download(s); they resume from their parts", recovered)
        self.spool.resume(self.fleet.live_nodes())
        self.fleet.start()
        self.notifier.start()
        self.webui.start()
        self.pool.start()
        self.watcher.start()
        self.feed.start()
        self.updates.start()
        self.library.recover()
        settled = self.replacer.recover()
        if settled:
            log.info("finished %d update(s) whose download ended while the daemon was down", settled)
        if s.library["scan_on_start"]:
            self.library.start()
        self.server.start()
        shown_host = s.host if s.host not in ("0.0.0.0", "::") else socket.gethostname()
        address = f"http://{shown_host}:{s.active_port}/gui"
        log.info("civitai-daemon %s ready: GUI at %s (config %s)", __version__, address, s.config_path)
        if not s.api_token and s.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("host %s exposes the API beyond this machine without api_token: anyone who can reach "
                        "port %s can queue and cancel downloads; set api_token in %s", s.host, s.active_port,
                        s.config_path)
        print(f"civitai-daemon {__version__} running: GUI at {address}", flush=True)
        gevent.signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        sdnotify.ready()
        self._stop_event = gevent.event.Event()
        watchdog = gevent.spawn(self._watchdog_loop)
        self._stop_event.wait()
        watchdog.kill(block=False)
        self.shutdown()
        return 0

    def request_stop(self, signame):
        """Signal handler: only sets flags. A second signal forces an immediate exit."""
        if self.stopping:
            log.warning("second %s: exiting now", signame)
            os._exit(1)
        self.stopping = True
        log.info("%s received: stopping (parts are kept; unfinished manifests stay in processing/)", signame)
        self._stop_event.set()

    def _watchdog_loop(self):
        interval = sdnotify.watchdog_interval() or 10.0
        while True:
            gevent.sleep(interval)
            ok, problems = self.health()
            if ok:
                sdnotify.watchdog()
            else:
                log.error("health check failed: %s", "; ".join(problems))

    def shutdown(self):
        sdnotify.stopping()
        started = time.monotonic()
        self.watcher.stop()
        self.api_stop.set()
        self.pool.stop(timeout=6.0)
        self.updates.stop()
        self.library.stop()
        self.fleet.stop()
        self.feed.stop()
        self.web.jsonrpc.stop()
        self.server.stop(timeout=1)
        self.webui.stop(timeout=0.5)
        self.notifier.stop(timeout=max(0.5, 8.5 - (time.monotonic() - started)))
        models.db.close()
        log.info("stopped cleanly in %.1f s", time.monotonic() - started)


def run(config_path):
    """Start the daemon in the foreground; returns the exit code."""
    try:
        settings = config.load(config_path)
        daemon = Daemon(settings)
        daemon.build()
    except ConfigError as exc:
        print(f"civitai-daemon: {exc}", file=sys.stderr)
        return 2
    return daemon.run()
