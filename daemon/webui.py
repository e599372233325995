"""Tell A1111/Forge about new files: `POST /sdapi/v1/refresh-<kind>` after downloads complete (SPEC §13).

The kind comes from the Civitai type, else from the folder the file landed
in. Per kind: the first completion is announced at once, later ones within
`INTERVAL` seconds are folded into one more call when the interval is over,
so a burst of 50 LoRAs costs two refreshes. The bus subscriber only records
the kind; one background thread makes the calls with a short timeout, so a
dead or hanging web UI never slows a download.
"""
import logging
import threading
import time
from pathlib import Path

import requests

from . import events, http

log = logging.getLogger("daemon.webui")

INTERVAL = 5.0
TIMEOUT = 10.0
ENDPOINTS = {"checkpoints": "/sdapi/v1/refresh-checkpoints", "loras": "/sdapi/v1/refresh-loras",
             "vae": "/sdapi/v1/refresh-vae", "embeddings": "/sdapi/v1/refresh-embeddings"}
BY_TYPE = {"Checkpoint": "checkpoints", "LORA": "loras", "LoCon": "loras", "DoRA": "loras", "VAE": "vae",
           "TextualInversion": "embeddings"}
# A1111 and ComfyUI folder names, for files whose Civitai type is unknown (lower case).
BY_FOLDER = {"stable-diffusion": "checkpoints", "checkpoints": "checkpoints", "lora": "loras", "loras": "loras",
             "lycoris": "loras", "vae": "vae", "embeddings": "embeddings"}


def kind_of(data, type_dirs, download_dir):
    """The refresh kind of a completed download's event data, or None (nothing A1111 refreshes)."""
    kind = BY_TYPE.get(data.get("model_type") or "")
    if kind:
        return kind
    folders = {folder.lower(): BY_TYPE[t] for t, folder in type_dirs.items() if t in BY_TYPE}
    path = data.get("path")
    if not path:
        return None
    try:
        parts = Path(path).parent.relative_to(download_dir).parts
    except ValueError:
        parts = Path(path).parent.parts[-1:]
    for part in parts:
        kind = folders.get(part.lower()) or BY_FOLDER.get(part.lower())
        if kind:
            return kind
    return None


class WebUiRefresher:
    """Debounced refresh calls to one web UI, from one thread."""

    def __init__(self, settings, bus, clock=time.monotonic):
        self.base = settings.webui_refresh["url"].rstrip("/") if settings.webui_refresh else None
        self.type_dirs = settings.type_dirs
        self.download_dir = Path(settings.download_dir)
        self.clock = clock
        self._due = {}    # kind → monotonic time of its next call (pending)
        self._last = {}   # kind → monotonic time of its last call
        self._cv = threading.Condition()
        self._stop = False
        self._thread = None
        self._session = http.new_session()
        self._failing = False
        if self.base:
            bus.subscribe(self._on_event)

    def _on_event(self, event):
        if event.name != events.DOWNLOAD_COMPLETED or not isinstance(event.data, dict):
            return
        kind = kind_of(event.data, self.type_dirs, self.download_dir)
        if kind is None:
            return
        with self._cv:
            if kind not in self._due:
                self._due[kind] = max(self.clock(), self._last.get(kind, float("-inf")) + INTERVAL)
                self._cv.notify()

    def start(self):
        if self.base:
            self._thread = threading.Thread(target=self._run, name="webui-refresh", daemon=True)
            self._thread.start()

    def stop(self, timeout=2.0):
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cv:
                while not self._stop:
                    now = self.clock()
                    ready = [k for k, due in self._due.items() if due <= now]
                    if ready:
                        break
                    self._cv.wait(min(self._due.values()) - now if self._due else None)
                if self._stop:
                    return
                for kind in ready:
                    del self._due[kind]
                    self._last[kind] = now
            for kind in ready:
                self._call(kind)

    def _call(self, kind):
        url = self.base + ENDPOINTS[kind]
        try:
            response = self._session.post(url, timeout=TIMEOUT)
            response.close()
            ok = response.status_code < 300
            problem = f"answered {response.status_code}"
        except requests.RequestException as exc:
            ok, problem = False, type(exc).__name__
        if ok:
            log.info("asked the web UI to refresh its %s (%s)", kind, url)
            self._failing = False
        elif not self._failing:  # logged once until it answers again: a web UI that is off is normal
            self._failing = True
            log.warning("web UI refresh %s failed (%s); is it running with --api? New files still arrive",
                        url, problem)
        else:
            log.debug("web UI still not answering %s (%s)", url, problem)
