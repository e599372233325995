"""A local fake Civitai for the real-process test suite.

One stdlib HTTP server plays four roles, told apart by path (and, for the
signed storage URLs, by host name):

* the REST API (``/api/v1/...``) with the shapes and quirks recorded in
  ``research/civitai-api.md`` §2;
* the download endpoint ``/api/download/models/{id}`` with the §3.2 decision
  table, answering 307 to a signed storage URL;
* an R2-like storage route ``/storage/<key>`` reached as
  ``http://localhost:<port>`` (the API lives on ``127.0.0.1``), so HTTP
  clients treat it as another host and drop ``Authorization`` on redirect;
* plain files ``/files/<name>`` for non-Civitai URLs.

Faults (connection drops, stalls, throttling, corrupt bodies, 5xx/429, expired
URLs, HTML pages with 200, wrong lengths...) are switched on through
``FakeCivitai.faults``; counters count down as they fire, a negative counter
fires forever.

Run ``python tests/fakeciv.py --root DIR --port N`` for a manual demo server.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import hashlib
import hmac
import http.server
import json
import os
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MiB = 1 << 20
BROWSER_WORDS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
FILE_TYPES = (
    "Model", "Text Encoder", "Vision Encoder", "Pruned Model", "Negative", "Training Data",
    "VAE", "Config", "Archive", "UNet", "Diffusion Model", "CLIPVision", "ControlNet",
    "Workflow", "Upscaler", "Enhancement LoRA", "Other",
)
FILE_FORMATS = ("SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other")
PUBLIC_CACHE = "public, s-maxage=300, stale-while-revalidate=150"
HASH_CACHE = "public, s-maxage=3600, stale-while-revalidate=1800"
MAINTENANCE_HTML = (
    "<!DOCTYPE html><html><head><title>Civitai | Maintenance</title></head><body>"
    "<h1>We're adjusting a few things, be back in a few minutes...</h1></body></html>"
)
LOGIN_HTML = (
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in | Civitai</title>"
    "</head><body><div id=\"__next\"><h1>Sign in to Civitai</h1><p>You need to be logged in to "
    "download this model.</p><button>Sign in with Discord</button></div></body></html>"
)


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, as the API prints it."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(s: str | None) -> float | None:
    if s is None:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def remove_empty(d: dict) -> dict:
    """Civitai's removeEmpty: drop None, undefined and empty-list values (shallow)."""
    return {k: v for k, v in d.items() if v is not None and not (isinstance(v, list) and not v)}


def filenamize(s: str, camel: bool) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", s) if w]
    if not camel:
        return "".join(words)[:20]
    out = "".join(w.lower() if i == 0 else w[:1].upper() + w[1:].lower() for i, w in enumerate(words))
    return out[:20]


def tiny_png(w: int = 2, h: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80\x40\x20" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PNG = tiny_png()


def safetensors_header(total_size: int) -> bytes:
    """8-byte length + JSON header (space padded to a multiple of 8) for a file of total_size bytes."""
    def js(n: int) -> bytes:
        return json.dumps({"__metadata__": {"format": "pt"},
                           "w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}},
                          separators=(",", ":")).encode()

    hlen = (len(js(max(total_size, 0))) + 7) // 8 * 8
    n = total_size - 8 - hlen
    if n < 0:
        raise ValueError(f"size {total_size} too small for a safetensors file (min {8 + hlen})")
    return struct.pack("<Q", hlen) + js(n).ljust(hlen, b" ")


# --------------------------------------------------------------------------- blobs


@dataclasses.dataclass
class Blob:
    path: Path
    size: int
    sha256: str  # lower hex
    crc32: str
    autov1: str | None
    etag: str
    mtime: float
    filename: str


def write_blob(path: Path, filename: str, *, data: bytes | None = None, size: int | None = None,
               seed: int = 0, safetensors: bool = False) -> Blob:
    """Write content to path, hashing on the fly. Generated content is deterministic in (seed, size, safetensors)."""
    sha = hashlib.sha256()
    crc = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        def put(b: bytes | memoryview) -> None:
            nonlocal crc
            f.write(b)
            sha.update(b)
            crc = zlib.crc32(b, crc)

        if data is not None:
            put(data)
            total = len(data)
        else:
            total = 64 * 1024 if size is None else int(size)
            written = 0
            if safetensors:
                head = safetensors_header(total)
                put(head)
                written = len(head)
            base = memoryview(random.Random(seed).randbytes(MiB))
            i = 0
            while written < total:
                rot = (i * 7919 + seed) % MiB
                for part in (base[rot:], base[:rot]):
                    take = min(len(part), total - written)
                    if take <= 0:
                        break
                    put(part[:take])
                    written += take
                i += 1
    autov1 = None
    if total >= 2 * MiB:
        with open(path, "rb") as f:
            f.seek(0x100000)
            autov1 = hashlib.sha256(f.read(0x10000)).hexdigest()[:8].upper()
    digest = sha.hexdigest()
    st = path.stat()
    return Blob(path=path, size=total, sha256=digest, crc32=f"{crc:08X}", autov1=autov1,
                etag=f'"{digest[:32]}"', mtime=st.st_mtime, filename=filename)


# --------------------------------------------------------------------------- faults


class Faults:
    """Switchable faults, read by the server per request. Counters: >0 fire and count down, <0 fire forever."""

    _COUNTERS = ("drop_times", "status_5xx", "status_429", "corrupt_times", "stall_times", "api_5xx",
                 "slow_segment_times", "segment_drop_times", "segment_expire_times")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.reset()
        self._sealed = True

    def reset(self) -> None:
        with self._lock:
            self._ranged = 0  # ranged requests seen (for ignore_range_on)
            # body faults (storage and /files)
            self.drop_after: int | None = None   # close the connection after N body bytes ...
            self.drop_times: int = 1             # ... for this many responses
            self.ignore_range: bool = False      # answer 200 + full body to Range requests
            self.corrupt_times: int = 0          # flip the last byte of the body for N responses
            self.rate: int | None = None         # bytes/s throttle of bodies
            self.stall_after: int | None = None  # after N body bytes send nothing ...
            self.stall_seconds: float = 30.0     # ... for this long (then go on)
            self.stall_times: int = 1
            self.extra_bytes: int = 0            # send this many bytes beyond Content-Length, then close
            self.wrong_length: int = 0           # advertise Content-Length off by this, then close
            self.no_content_length: bool = False  # close-delimited body, no Content-Length
            self.chunked: bool = False           # Transfer-Encoding: chunked, no Content-Length
            self.expire_seconds: float | None = None  # signed storage URLs older than this -> 403 ExpiredRequest
            self.blocked_user_agents: list[str] = []  # substrings; storage answers 403 (B2 vs aria2c)
            # segment faults (storage and /files). `rate` above already caps each connection; a
            # "segment" here is a ranged answer (206) that starts past byte 0.
            self.slow_segment_rate: int | None = None  # serve a segment at this many bytes/s ...
            self.slow_segment_times: int = 1           # ... for this many segments (work stealing)
            self.segment_drop_after: int | None = None  # close a segment's connection after N bytes ...
            self.segment_drop_times: int = 1            # ... for this many segments
            self.segment_expire_after: int | None = None  # after N bytes of a segment, close it and expire
            self.segment_expire_times: int = 1            # its signed link (later requests: 403 ExpiredRequest)
            self.etag_change_after: int | None = None  # once N body bytes of a blob were served, it gets a
            #                                            new ETag and Last-Modified (same bytes: a re-upload)
            self.ignore_range_on: int | None = None    # the Nth ranged request (1 = first) gets 200 + full body
            self.no_accept_ranges: bool = False        # leave out Accept-Ranges: bytes (a server without ranges)
            # entry-point faults (download endpoint and /files)
            self.status_5xx: int = 0             # 503 JSON
            self.status_429: int = 0             # 429 JSON (quota message)
            self.retry_after: int | None = None  # Retry-After header on those 429s
            self.html_200: bool = False          # maintenance HTML page with 200
            # API faults (/api/v1)
            self.api_5xx: int = 0                # 503 JSON
            self.api_delay: float = 0.0          # seconds before answering
            self.api_html_200: bool = False      # maintenance HTML page with 200 instead of JSON

    def take(self, counter: str) -> bool:
        """Atomically test-and-decrement a counter; True when the fault fires now."""
        with self._lock:
            n = getattr(self, counter)
            if not n:
                return False
            if n > 0:
                setattr(self, counter, n - 1)
            return True

    def count_ranged(self) -> int:
        """Number this ranged request (1, 2, ...) since the last reset."""
        with self._lock:
            self._ranged = self.__dict__.get("_ranged", 0) + 1
            return self._ranged

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_sealed") and not name.startswith("_") and name not in self.__dict__:
            raise AttributeError(f"unknown fault {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        on = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"Faults({on})"


@dataclasses.dataclass
class Served:
    """The body bytes one answer actually wrote: [start, end) of the blob named `name` (its file name;
    for /files blobs without a Content-Disposition name, the name of the blob's file on disk)."""
    name: str
    start: int
    end: int
    status: int
    opened: float = 0.0  # when the body started and ended (time.monotonic), for "how many at once"
    closed: float = 0.0


@dataclasses.dataclass
class Recorded:
    method: str
    path: str            # with query
    headers: dict[str, str]
    host: str            # "api" | "storage" | "files"
    time: float = 0.0
    status: int | None = None  # filled in when the answer's status line is written
    body: bytes = b""          # the request body (the bulk by-hash lookups send JSON)
    port: int = 0              # the client's TCP port: requests on one connection share it


# --------------------------------------------------------------------------- server


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeCivitai"

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, OSError)):
            return
        import traceback
        traceback.print_exc()


class FakeCivitai:
    def __init__(self, root: Path | str, *, storage_host: str = "localhost") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_host = storage_host
        self.valid_tokens: set[str] = {"good-token"}
        self.anonymous_downloads: bool = True
        self.url_expires: int = 86400  # the X-Amz-Expires value advertised (and enforced unless faults.expire_seconds)
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.base_url = ""
        self.port = 0
        self._lock = threading.RLock()
        self._models: dict[int, dict] = {}
        self._versions: dict[int, dict] = {}
        self._blobs: dict[str, Blob] = {}      # storage key -> blob
        self._files: dict[str, Blob] = {}      # /files name -> blob
        self._signatures: dict[str, float] = {}  # signature -> issue time
        self._secret = os.urandom(16)
        self._t0 = time.time() - 3600.0
        self._seq = 0
        self._nonce = 0
        self._gen = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self.served: list[Served] = []          # body byte ranges written, in order (segment tests)
        self._expired: set[str] = set()         # signatures expired by segment_expire_after

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeCivitai":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fakeciv", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "FakeCivitai":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def storage_origin(self) -> str:
        return f"http://{self.storage_host}:{self.port}"

    # ------------------------------------------------------------ request log helpers
    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, host: str | None = None, prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if (host is None or r.host == host) and r.path.startswith(prefix)]

    def served_ranges(self, name: str) -> list[tuple[int, int]]:
        """The [start, end) byte ranges of blob `name` (its file name) written so far."""
        with self._lock:
            return [(s.start, s.end) for s in self.served if s.name == name and s.end > s.start]

    def most_at_once(self, name: str) -> int:
        """The largest number of bodies of blob `name` that were being sent at the same moment."""
        with self._lock:
            spans = [(s.opened, s.closed or time.monotonic()) for s in self.served if s.name == name]
        edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
        most = depth = 0
        for _, step in edges:
            depth += step
            most = max(most, depth)
        return most

    def bytes_served_twice(self, name: str) -> int:
        """How many bytes of blob `name` were written by more than one answer."""
        edges = sorted([(a, 1) for a, _ in self.served_ranges(name)] + [(b, -1) for _, b in self.served_ranges(name)])
        twice, depth, last = 0, 0, 0
        for pos, step in edges:
            if depth > 1:
                twice += (pos - last) * (depth - 1)
            depth, last = depth + step, pos
        return twice

    # ------------------------------------------------------------ catalogue
    def _next_time(self) -> float:
        with self._lock:
            self._seq += 1
            return self._t0 + self._seq

    def add_model(self, model_id: int, name: str, type: str = "Checkpoint", nsfw: bool = False,  # noqa: A002
                  description: str | None = "<p>A fake model.</p>", tags: tuple | list = ("base model",),
                  creator: str = "fake_creator") -> None:
        with self._lock:
            self._models[model_id] = {
                "id": model_id, "name": name, "type": type, "nsfw": nsfw, "description": description,
                "tags": list(tags), "creator": creator, "order": [], "mode": None,
            }

    def add_version(self, model_id: int, version_id: int, name: str, *, data: bytes | None = None,
                    size: int | None = None, seed: int | None = None, filename: str | None = None,
                    base_model: str = "SD 1.5", published_at: str | None = None, created_at: str | None = None,
                    require_auth: bool = False, early_access_until: str | None = None,
                    downloads_disabled: bool = False, archived: bool = False, deleted: bool = False,
                    image_nsfw_level: int = 1, trained_words: tuple | list = ("trigger",),
                    hash_override: str | None = None, file_id: int | None = None,
                    hashes_pending: bool = False, published: bool = True,
                    description: str | None = "<p>Version notes.</p>", paid_permanent: bool = False) -> dict:
        """Add a version with one primary file; it goes first in modelVersions. Returns sha256/size/filename."""
        with self._lock:
            model = self._models[model_id]
        if filename is None:
            stem = filenamize(model["name"], True) or "model"
            filename = f"{stem}_{filenamize(name, False)}.safetensors"
        t = self._next_time()
        v = {
            "id": version_id, "model_id": model_id, "name": name, "filename": filename,
            "file_id": file_id if file_id is not None else version_id * 10 + 1,
            "base_model": base_model,
            "published_at": published_at or iso(t),
            "created_at": created_at or iso(t - 1800),
            "updated_at": iso(t),
            "require_auth": require_auth, "early_access_until": early_access_until,
            "downloads_disabled": downloads_disabled, "archived": archived, "deleted": deleted,
            "image_nsfw_level": image_nsfw_level, "trained_words": list(trained_words),
            "hash_override": hash_override, "hashes_pending": hashes_pending, "published": published,
            "description": description, "paid_permanent": paid_permanent,
            "key": f"model/{model_id}/{(Path(filename).stem.lower() or 'file')[:40]}."
                   f"{hashlib.sha256(str(version_id).encode()).hexdigest()[:4]}{Path(filename).suffix}",
        }
        blob = self._make_blob(v, data, size, seed if seed is not None else version_id)
        with self._lock:
            self._blobs[v["key"]] = blob
            self._versions[version_id] = v
            if version_id in model["order"]:
                model["order"].remove(version_id)
            model["order"].insert(0, version_id)
        return self._info(version_id)

    def _make_blob(self, v: dict, data: bytes | None, size: int | None, seed: int) -> Blob:
        with self._lock:
            self._gen += 1
            gen = self._gen
        path = self.root / "storage" / f"v{v['id']}-g{gen}.bin"
        return write_blob(path, v["filename"], data=data, size=size, seed=seed,
                          safetensors=data is None and v["filename"].lower().endswith(".safetensors"))

    def _info(self, version_id: int) -> dict:
        with self._lock:
            v = self._versions[version_id]
            b = self._blobs[v["key"]]
            return {"sha256": b.sha256, "size": b.size, "filename": v["filename"], "file_id": v["file_id"],
                    "published_sha256": (v["hash_override"] or b.sha256).lower(),
                    "download_url": f"{self.base_url}/api/download/models/{version_id}",
                    "path": str(b.path)}

    def version_info(self, version_id: int) -> dict:
        return self._info(version_id)

    def set_version_content(self, version_id: int, data: bytes | None = None, size: int | None = None,
                            seed: int | None = None) -> dict:
        """A re-upload: new bytes and SHA256 under the same version and file id (and storage key)."""
        with self._lock:
            v = self._versions[version_id]
            old = self._blobs[v["key"]]
        if size is None and data is None:
            size = old.size
        blob = self._make_blob(v, data, size, seed if seed is not None else version_id + 7_777_777 + self._gen)
        with self._lock:
            self._blobs[v["key"]] = blob
            v["hash_override"] = None
            v["updated_at"] = iso(max(time.time(), parse_iso(v["updated_at"]) + 1))
        try:
            old.path.unlink()
        except OSError:
            pass
        return self._info(version_id)

    def update_version(self, version_id: int, **changes: Any) -> None:
        """Change version flags after creation (require_auth, early_access_until, deleted, archived,
        downloads_disabled, published, hash_override, hashes_pending, published_at, name, base_model...)."""
        with self._lock:
            v = self._versions[version_id]
            for k, val in changes.items():
                if k not in v or k in ("id", "model_id", "key"):
                    raise KeyError(k)
                v[k] = val
            v["updated_at"] = iso(max(time.time(), parse_iso(v["updated_at"]) + 1))

    def reorder(self, model_id: int, version_ids: list[int]) -> None:
        with self._lock:
            m = self._models[model_id]
            rest = [x for x in m["order"] if x not in version_ids]
            m["order"] = list(version_ids) + rest

    def set_model_mode(self, model_id: int, mode: str | None) -> None:
        """Model-level moderation: None, "Archived" or "TakenDown"."""
        with self._lock:
            self._models[model_id]["mode"] = mode

    def add_blob(self, name: str, data: bytes | None = None, size: int | None = None, seed: int | None = None,
                 safetensors: bool = False, content_disposition: str | None = None) -> dict:
        """A plain non-Civitai file at {base_url}/files/<name>."""
        with self._lock:
            self._gen += 1
            gen = self._gen
        if seed is None:
            seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        blob = write_blob(self.root / "files" / f"f{gen}.bin", content_disposition or "", data=data, size=size,
                          seed=seed, safetensors=safetensors and data is None)
        with self._lock:
            self._files[name] = blob
        return {"url": f"{self.base_url}/files/{urllib.parse.quote(name)}", "sha256": blob.sha256,
                "size": blob.size, "path": str(blob.path)}

    # ------------------------------------------------------------ JSON views
    def _gated(self, v: dict) -> bool:
        t = parse_iso(v["early_access_until"])
        return t is not None and t > time.time()

    def _visible(self, v: dict) -> bool:
        return v["published"] and not v["deleted"]

    def _hashes(self, v: dict, b: Blob) -> dict:
        if v["hashes_pending"]:
            return {}
        sha = (v["hash_override"] or b.sha256).upper()
        h = {}
        if b.autov1 and not v["hash_override"]:
            h["AutoV1"] = b.autov1
        h["AutoV2"] = sha[:10]
        h["SHA256"] = sha
        h["CRC32"] = b.crc32
        h["BLAKE3"] = hashlib.sha256(b"blake3:" + sha.encode()).hexdigest().upper()
        h["AutoV3"] = hashlib.sha256(b"autov3:" + sha.encode()).hexdigest().upper()[:12]
        return h

    def _file_json(self, v: dict, primary: bool | None) -> dict:
        b = self._blobs[v["key"]]
        ext = v["filename"].lower().rsplit(".", 1)[-1]
        fmt = {"safetensors": "SafeTensor", "ckpt": "PickleTensor", "pt": "PickleTensor", "bin": "PickleTensor",
               "gguf": "GGUF"}.get(ext, "Other")
        pending = v["hashes_pending"]
        f = {
            "id": v["file_id"], "sizeKB": b.size / 1024, "name": v["filename"], "type": "Model",
            "pickleScanResult": "Pending" if pending else "Success",
            "pickleScanMessage": None if pending else "No Pickle imports",
            "virusScanResult": "Pending" if pending else "Success", "virusScanMessage": None,
            "scannedAt": None if pending else v["created_at"],
            "metadata": {"format": fmt, "size": "pruned", "fp": "fp16"},
            "hashes": self._hashes(v, b),
            "downloadUrl": f"{self.base_url}/api/download/models/{v['id']}",
        }
        if primary is not None:
            f["primary"] = primary
        return f

    def _image_json(self, v: dict, full: bool, with_id: bool) -> dict:
        img = {"url": f"{self.base_url}/images/{v['id']}.png", "nsfwLevel": v["image_nsfw_level"],
               "width": 2, "height": 2, "hash": "U8ExAmPlEbLuRhAsH00000000000", "type": "image",
               "minor": False, "poi": False, "hasMeta": True, "hasPositivePrompt": True, "onSite": False,
               "remixOfId": None}
        if with_id:
            img["id"] = v["id"] * 100 + 1
        if full:
            img["metadata"] = {"hash": img["hash"], "size": len(PNG), "width": 2, "height": 2}
            img["meta"] = {"prompt": "a photo of a fake", "steps": 20, "sampler": "Euler a"}
            img["availability"] = "Public"
        return img

    def _model_nsfw_level(self, m: dict) -> int:
        lvl = 0
        for vid in m["order"]:
            lvl |= self._versions[vid]["image_nsfw_level"]
        return lvl or 1

    def model_json(self, model_id: int, for_list: bool = False) -> dict | None:
        with self._lock:
            m = self._models.get(model_id)
            if m is None:
                return None
            versions = []
            archived_model = m["mode"] in ("Archived", "TakenDown")
            for idx, vid in enumerate(m["order"]):
                v = self._versions[vid]
                if not self._visible(v):
                    continue
                gated = self._gated(v)
                no_files = archived_model or v["archived"]
                vj = {
                    "id": v["id"], "index": idx, "name": v["name"], "baseModel": v["base_model"],
                    "baseModelType": "Standard", "createdAt": v["created_at"], "publishedAt": v["published_at"],
                    "status": "Published", "availability": "EarlyAccess" if gated else "Public",
                    "nsfwLevel": v["image_nsfw_level"], "description": v["description"],
                    "trainedWords": list(v["trained_words"]), "covered": False, "flags": 0,
                    "stats": {"downloadCount": 100 + v["id"] % 1000, "thumbsUpCount": 10, "thumbsDownCount": 0},
                    "files": [] if no_files else [self._file_json(v, True)],
                    "images": [] if m["mode"] == "TakenDown" else [self._image_json(v, False, for_list)],
                    "downloadUrl": None if no_files else f"{self.base_url}/api/download/models/{v['id']}",
                }
                if gated:
                    vj["earlyAccessDeadline"] = v["early_access_until"]
                    vj["paidAccess"] = {"permanent": False, "endsAt": v["early_access_until"]}
                elif v.get("paid_permanent"):
                    vj["paidAccess"] = {"permanent": True}
                if for_list:
                    del vj["createdAt"], vj["status"]
                versions.append(remove_empty(vj))
            out = {
                "id": m["id"], "name": m["name"], "description": m["description"], "allowNoCredit": True,
                "allowCommercialUse": "{Image,RentCivit}", "allowDerivatives": True,
                "allowDifferentLicense": True, "type": m["type"], "minor": False, "sfwOnly": False, "poi": False,
                "nsfw": m["nsfw"], "nsfwLevel": self._model_nsfw_level(m), "availability": "Public",
                "supportsGeneration": False,
                "stats": {"downloadCount": 1234, "thumbsUpCount": 56, "thumbsDownCount": 1, "commentCount": 7,
                          "tippedAmountCount": 0},
                "creator": {"username": m["creator"], "image": None}, "tags": list(m["tags"]),
                "modelVersions": versions,
            }
            if m["mode"]:
                out["mode"] = m["mode"]
            return out

    def version_json(self, version_id: int) -> dict | None:
        with self._lock:
            v = self._versions.get(version_id)
            if v is None or not self._visible(v):
                return None
            m = self._models[v["model_id"]]
            gated = self._gated(v)
            eco = {"SD 1.5": "sd1", "SD 2.1": "sd2", "SDXL 1.0": "sdxl", "Pony": "sdxl", "Illustrious": "sdxl",
                   "Flux.1 D": "flux1", "Flux.1 S": "flux1"}.get(v["base_model"], "other")
            atype = {"TextualInversion": "embedding"}.get(m["type"], m["type"].lower())
            model = {"name": m["name"], "type": m["type"], "nsfw": m["nsfw"], "poi": False}
            if m["mode"]:
                model["mode"] = m["mode"]
            out = {
                "id": v["id"], "modelId": m["id"], "name": v["name"], "nsfwLevel": v["image_nsfw_level"],
                "createdAt": v["created_at"], "updatedAt": v["updated_at"], "status": "Published",
                "publishedAt": v["published_at"], "trainedWords": list(v["trained_words"]),
                "trainingStatus": None, "trainingDetails": None, "baseModel": v["base_model"],
                "baseModelType": "Standard", "description": v["description"], "uploadType": "Created",
                "usageControl": "Generation" if v["downloads_disabled"] else "Download", "licensingFee": None,
                "paidAccess": ({"permanent": False, "endsAt": v["early_access_until"]} if gated
                               else {"permanent": True} if v.get("paid_permanent") else None),
                "air": f"urn:air:{eco}:{atype}:civitai:{m['id']}@{v['id']}",
                "stats": {"downloadCount": 100 + v["id"] % 1000, "thumbsUpCount": 10},
                "model": model,
                "files": [self._file_json(v, True)],
                "images": [self._image_json(v, True, False)],
                "downloadUrl": f"{self.base_url}/api/download/models/{v['id']}",
            }
            if gated:
                out["availability"] = "EarlyAccess"
                out["earlyAccessEndsAt"] = v["early_access_until"]
            return out

    def find_by_hash(self, h: str) -> int | None:
        h = h.upper()
        with self._lock:
            hits = []
            for v in self._versions.values():
                if not self._visible(v):
                    continue
                hashes = self._hashes(v, self._blobs[v["key"]])
                if h in hashes.values():
                    hits.append((parse_iso(v["published_at"]), v["id"]))
            return min(hits)[1] if hits else None

    def find_by_sha256(self, h: str) -> int | None:
        """The bulk endpoints match SHA256 only (not AutoV2 or other hash kinds)."""
        h = h.upper()
        with self._lock:
            hits = [(parse_iso(v["published_at"]), v["id"]) for v in self._versions.values()
                    if self._visible(v) and self._hashes(v, self._blobs[v["key"]]).get("SHA256") == h]
            return min(hits)[1] if hits else None

    def calls(self, method: str, path: str) -> int:
        """How many requests with this method went to exactly this path (query ignored)."""
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path.split("?")[0] == path)

    # ------------------------------------------------------------ signing
    def sign(self, key: str, filename: str) -> str:
        now = time.time()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        with self._lock:
            self._nonce += 1
            nonce = self._nonce
        sig = hmac.new(self._secret, f"{key}|{amz_date}|{nonce}".encode(), hashlib.sha256).hexdigest()
        with self._lock:
            self._signatures[sig] = now
        disp = f'attachment; filename="{filename}"'
        q = [("X-Amz-Expires", str(self.url_expires)),
             ("response-content-disposition", disp),
             ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
             ("X-Amz-Credential", f"FAKEKEY0000000000000/{amz_date[:8]}/us-east-1/s3/aws4_request"),
             ("X-Amz-Date", amz_date), ("X-Amz-SignedHeaders", "host"), ("X-Amz-Signature", sig)]
        qs = "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in q)
        return f"{self.storage_origin}/storage/{urllib.parse.quote(key)}?{qs}"


# --------------------------------------------------------------------------- handler


class _Abort(Exception):
    """Stop writing this response and close the connection."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return "cloudflare"
    fake: FakeCivitai
    rec: Recorded | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.fake._lock:
            self.fake._conns.discard(self.connection)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Abort:
            self.close_connection = True
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.rec is not None and self.rec.status is None:
            self.rec.status = code
        super().send_response(code, message)

    # ---------------------------------------------------------------- plumbing
    def _drain(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(n) if n > 0 else b""
        if self.rec is not None:
            self.rec.body = self.body

    def _send(self, code: int, body: bytes | str, ctype: str, headers: dict | None = None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: dict | None = None) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False), "application/json; charset=utf-8", headers)

    def _text(self, code: int, text: str, headers: dict | None = None) -> None:
        self._send(code, text, "text/plain; charset=utf-8", headers)

    def _html(self, code: int, html: str, headers: dict | None = None) -> None:
        self._send(code, html, "text/html; charset=utf-8", headers)

    def _xml(self, code: int, code_name: str, message: str, headers: dict | None = None) -> None:
        body = ('<?xml version="1.0" encoding="UTF-8"?>'
                f"<Error><Code>{code_name}</Code><Message>{message}</Message></Error>")
        self._send(code, body, "application/xml", headers)

    def _redirect(self, url: str, headers: dict | None = None) -> None:
        h = {"Location": url}
        h.update(headers or {})
        self._send(307, url, "text/plain; charset=utf-8", h)

    def _is_browser(self) -> bool:
        ua = (self.headers.get("User-Agent") or "").lower()
        return any(w in ua for w in BROWSER_WORDS)

    def _token(self, query: dict) -> str | None:
        auth = self.headers.get("Authorization")
        if auth is not None:
            parts = auth.split(" ")
            tok = parts[1].strip() if len(parts) > 1 else None
        else:
            tok = (query.get("token") or [None])[0]
            tok = tok.strip() if tok else None
        return tok if tok and tok in self.fake.valid_tokens else None

    # ---------------------------------------------------------------- dispatch
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        host = "storage" if path.startswith("/storage/") else "files" if path.startswith("/files/") else "api"
        self.rec = Recorded(self.command, self.path, dict(self.headers.items()), host, time.time(),
                            port=self.client_address[1])
        self.fake._record(self.rec)
        self._drain()
        if host == "storage":
            return self._storage(urllib.parse.unquote(path[len("/storage/"):]), query)
        if host == "files":
            return self._files(urllib.parse.unquote(path[len("/files/"):]))
        if path.startswith("/api/v1/"):
            return self._api(path[len("/api/v1"):], query)
        m = re.fullmatch(r"/api/download/models/([^/]+)", path)
        if m:
            return self._download(m.group(1), query)
        m = re.fullmatch(r"/images/(\d+)\.png", path)
        if m:
            return self._send(200, PNG, "image/png", {"Cache-Control": "public, max-age=31536000"})
        if path == "/login":
            return self._html(200, LOGIN_HTML)
        if re.fullmatch(r"/model-versions/\d+|/models/\d+(/.*)?", path):
            return self._html(200, "<!DOCTYPE html><html><head><title>Civitai</title></head>"
                                   "<body><h1>Early Access</h1></body></html>")
        return self._html(404, "<!DOCTYPE html><html><body><h1>404 Page not found</h1></body></html>")

    # ---------------------------------------------------------------- API
    def _api(self, path: str, query: dict) -> None:
        f = self.fake
        faults = f.faults
        if faults.api_delay:
            f._stopping.wait(faults.api_delay)
        if faults.take("api_5xx"):
            return self._json(503, {"error": "Service Unavailable"}, {"Cache-Control": "no-store", "Retry-After": "2"})
        if faults.api_html_200:
            return self._html(200, MAINTENANCE_HTML)
        cors = {"Access-Control-Allow-Origin": "*"}
        session = self._token(query) is not None

        if path in ("/model-versions/by-hash", "/model-versions/by-hash/ids"):
            return self._by_hash_bulk(path.endswith("/ids"), cors)

        m = re.fullmatch(r"/model-versions/by-hash/([^/]+)", path)
        if m:
            vid = f.find_by_hash(urllib.parse.unquote(m.group(1)))
            hdr = {**cors, "Cache-Control": HASH_CACHE}
            if vid is None:
                return self._json(404, {"error": "Model not found"}, hdr)
            return self._json(200, f.version_json(vid), hdr)

        m = re.fullmatch(r"/model-versions/([^/]+)", path)
        if m:
            if self.command != "GET":
                return self._json(405, {"error": "Method Not Allowed"}, {"Allow": "GET"})
            hdr = dict(cors) if session else {**cors, "Cache-Control": PUBLIC_CACHE}
            if not m.group(1).isdigit():
                return self._json(400, {"error": "Expected number, received nan"}, hdr)
            body = f.version_json(int(m.group(1)))
            if body is None:
                return self._json(404, {"error": "Model not found"}, hdr)
            return self._json(200, body, hdr)

        m = re.fullmatch(r"/models/([^/]+)", path)
        if m:
            hdr = {**cors, "Cache-Control": PUBLIC_CACHE}
            s = m.group(1)
            if not s.isdigit() or not 1 <= int(s) <= 2147483647:
                return self._json(400, {"error": "Expected number, received nan" if not s.lstrip("-").isdigit()
                                        else "Number must be greater than or equal to 1"}, hdr)
            body = f.model_json(int(s))
            if body is None:
                return self._json(404, {"error": f"No model with id {int(s)}"}, hdr)
            return self._json(200, body, hdr)

        if path in ("/models", "/models/"):
            if self.command != "GET":
                return self._json(405, {"error": "Method Not Allowed"}, {"Allow": "GET"})
            return self._models_list(query, session, cors)

        return self._json(404, {"error": "Not found"}, cors)

    def _by_hash_bulk(self, ids_only: bool, cors: dict) -> None:
        """POST by-hash (≤ 100 SHA256 → version objects) and by-hash/ids (≤ 10,000 → id triples)."""
        if self.command != "POST":
            return self._json(405, {"error": "Method Not Allowed"}, {"Allow": "POST"})
        limit = 10_000 if ids_only else 100
        try:
            hashes = json.loads(self.body or b"null")
        except ValueError:
            return self._json(400, {"error": "Invalid JSON body"}, cors)
        if not isinstance(hashes, list) or not all(isinstance(h, str) and len(h) == 64 for h in hashes):
            return self._json(400, {"error": "Expected an array of SHA256 hashes (64 characters each)"}, cors)
        if len(hashes) > limit:
            return self._json(400, {"error": f"Array must contain at most {limit} element(s)"}, cors)
        out, seen = [], set()
        for h in hashes:
            vid = self.fake.find_by_sha256(h)
            if vid is None:
                continue  # unmatched hashes are silently dropped
            if ids_only:
                out.append({"modelVersionId": vid, "modelId": self.fake._versions[vid]["model_id"],
                            "hash": h.upper()})
            elif vid not in seen:
                seen.add(vid)
                out.append(self.fake.version_json(vid))
        return self._json(200, out, cors)

    def _models_list(self, query: dict, session: bool, cors: dict) -> None:
        f = self.fake
        hdr = dict(cors) if session else {**cors, "Cache-Control": PUBLIC_CACHE}
        ids: list[int] = []
        try:
            for raw in query.get("ids", []):
                ids += [int(x) for x in raw.split(",") if x.strip()]
            limit = int((query.get("limit") or ["100"])[0])
            page = int((query.get("page") or ["0"])[0]) or None
            cursor = int((query.get("cursor") or ["0"])[0] or 0)
        except ValueError:
            return self._json(400, {"error": "Expected number, received nan"}, hdr)
        if not 0 <= limit <= 100:
            return self._json(400, {"error": "Number must be less than or equal to 100"}, hdr)
        if page and page * max(limit, 1) > 1000:
            return self._json(429, {"error": "You've requested too many pages, please use cursors instead"}, hdr)
        nsfw = (query.get("nsfw") or ["false"])[0].lower() == "true"
        with f._lock:
            all_ids = sorted(f._models) if not ids else [i for i in sorted(set(ids)) if i in f._models]
            if not nsfw:
                all_ids = [i for i in all_ids if not f._models[i]["nsfw"]]
        limit = limit or 100
        start = (page - 1) * limit if page else cursor
        chunk = all_ids[start:start + limit]
        items = []
        for mid in chunk:
            mj = f.model_json(mid, for_list=True)
            if mj is not None and mj["modelVersions"]:
                items.append(mj)
        meta: dict[str, Any] = {}
        if page:
            meta["currentPage"] = page
            meta["pageSize"] = limit
        if start + limit < len(all_ids):
            nxt = start + limit
            meta["nextCursor"] = str(nxt)
            q = {k: v for k, v in query.items() if k not in ("cursor", "page")}
            q["cursor"] = [str(nxt)]
            meta["nextPage"] = f"{f.base_url}/api/v1/models?{urllib.parse.urlencode(q, doseq=True)}"
        self._json(200, {"items": items, "metadata": meta}, hdr)

    # ---------------------------------------------------------------- download endpoint
    def _entry_faults(self) -> bool:
        """Faults shared by the download endpoint and /files; True when one answered."""
        faults = self.fake.faults
        if faults.take("status_429"):
            h = {} if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            self._json(429, {"error": "We've noticed an unusual amount of downloading from your account. "
                                      "Contact support@civitai.com or come back later."}, h)
            return True
        if faults.take("status_5xx"):
            self._json(503, {"error": "Service Unavailable"}, {"Cache-Control": "no-store"})
            return True
        if faults.html_200:
            self._html(200, MAINTENANCE_HTML)
            return True
        return False

    def _download(self, vid_s: str, query: dict) -> None:
        f = self.fake
        browser = self._is_browser()
        nocache = {"Cache-Control": "no-store, max-age=0"}

        def err(code: int, msg: str) -> None:
            if browser:
                self._text(code, msg, nocache)
            else:
                self._json(code, {"error": msg}, nocache)

        if self._entry_faults():
            return
        # step 4: query validation (always JSON)
        if not vid_s.isdigit():
            return self._json(400, {"error": "Expected number, received nan"}, nocache)
        for name, allowed in (("type", FILE_TYPES), ("format", FILE_FORMATS), ("size", ("full", "pruned"))):
            val = (query.get(name) or [None])[0]
            if val is not None and val not in allowed:
                return self._json(400, {"error": f"Invalid enum value. Expected {' | '.join(repr(a) for a in allowed)}, "
                                                 f"received '{val}'"}, nocache)
        file_id = (query.get("fileId") or [None])[0]
        if file_id is not None and not file_id.isdigit():
            return self._json(400, {"error": "Expected number, received nan"}, nocache)
        vid = int(vid_s)
        with f._lock:
            v = dict(f._versions[vid]) if vid in f._versions else None
            m = dict(f._models[v["model_id"]]) if v else None
        if v is None:  # step 5
            return err(404, "File not found")
        if v["archived"] or m["mode"] == "Archived":  # step 6
            return err(410, "Model archived, not available for download")
        if v["deleted"] or not v["published"] or m["mode"] == "TakenDown":  # step 7
            return err(404, "File not found")
        if v["downloads_disabled"]:  # step 8
            return self._json(401, {"error": "Unauthorized",
                                    "message": "The creator of this asset has disabled downloads on this file"},
                              nocache)
        session = self._token(query) is not None
        if (v["require_auth"] or not f.anonymous_downloads) and not session:  # step 9
            if browser:
                return self._redirect(f"/login?returnUrl=%2Fmodel-versions%2F{vid}&reason=download-auth", nocache)
            return self._json(401, {"error": "Unauthorized",
                                    "message": "The creator of this asset requires you to be logged in to download it"},
                              nocache)
        if f._gated(v):  # step 10
            if browser:
                return self._redirect(f"/model-versions/{vid}", nocache)
            return self._json(403, {"error": "Early Access", "deadline": v["early_access_until"],
                                    "message": "This asset is in Early Access. You can use Buzz access it now!"},
                              nocache)
        # step 12: file selection
        with f._lock:
            fj = f._file_json(v, True)
        want_type = (query.get("type") or [None])[0]
        mismatch = (file_id is not None and int(file_id) != fj["id"]) or \
            (want_type is not None and want_type not in (fj["type"],)) or \
            any((query.get(k) or [None])[0] not in (None, fj["metadata"].get(k)) for k in ("format", "size", "fp"))
        if mismatch:
            return err(404, "File not found")
        self._redirect(f.sign(v["key"], v["filename"]), nocache)  # step 13

    # ---------------------------------------------------------------- storage and files
    def _storage(self, key: str, query: dict) -> None:
        f = self.fake
        if "Authorization" in self.headers:
            return self._xml(400, "InvalidRequest", "Missing x-amz-content-sha256")
        ua = (self.headers.get("User-Agent") or "").lower()
        if any(b.lower() in ua for b in f.faults.blocked_user_agents):
            return self._xml(403, "AccessDenied", "Access Denied")
        sig = (query.get("X-Amz-Signature") or [""])[0]
        with f._lock:
            issued = f._signatures.get(sig)
            blob = f._blobs.get(key)
        if issued is None:
            return self._xml(403, "SignatureDoesNotMatch",
                             "The request signature we calculated does not match the signature you provided.")
        limit = f.faults.expire_seconds if f.faults.expire_seconds is not None else f.url_expires
        if time.time() - issued > limit or sig in f._expired:
            return self._xml(403, "ExpiredRequest", "Request has expired")
        if blob is None:
            return self._xml(404, "NoSuchKey", "The specified key does not exist.")
        disp = (query.get("response-content-disposition") or [None])[0]
        self._sig = sig
        self._serve_blob(blob, disp)

    def _files(self, name: str) -> None:
        f = self.fake
        if self._entry_faults():
            return
        with f._lock:
            blob = f._files.get(name)
        if blob is None:
            return self._html(404, "<html><body><h1>404 Not Found</h1></body></html>")
        self._sig = None  # /files links do not expire
        self._serve_blob(blob, blob.filename or None)

    def _serve_blob(self, blob: Blob, disposition: str | None) -> None:
        faults = self.fake.faults
        size = blob.size
        start, end, partial = 0, size - 1, False
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        last_mod = email.utils.formatdate(blob.mtime, usegmt=True)
        if rng and if_range is not None and if_range.strip() not in (blob.etag, last_mod):
            rng = None
        if rng and faults.ignore_range:
            rng = None
        if rng and faults.ignore_range_on is not None and faults.count_ranged() == faults.ignore_range_on:
            rng = None
        if rng:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    if m.group(2) and int(m.group(2)) < start:
                        m = None
                else:
                    n = int(m.group(2))
                    if n == 0:
                        start = size
                    else:
                        start, end = max(0, size - n), size - 1
                if m is not None:
                    if start >= size:
                        return self._xml(416, "InvalidRange", "The requested range is not satisfiable",
                                         {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
                    partial = True
            # anything else (multi-range, garbage): ignore, serve 200
        length = end - start + 1 if size else 0

        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        close_after = False
        if faults.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif faults.no_content_length:
            self.send_header("Connection", "close")
            close_after = True
        else:
            self.send_header("Content-Length", str(length + faults.wrong_length))
            if faults.wrong_length or faults.extra_bytes:
                close_after = True
        if not faults.no_accept_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", blob.etag)
        self.send_header("Last-Modified", last_mod)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if disposition:
            # raw UTF-8 bytes inside filename="..." (send_header encodes latin-1)
            self.send_header("Content-Disposition", disposition.encode("utf-8").decode("latin-1"))
        self.end_headers()
        if self.command == "HEAD":
            return
        if close_after:
            self.close_connection = True
        self._stream(blob, start, length, chunked=faults.chunked, segment=partial and start > 0)
        if close_after:
            self._hard_close()

    def _hard_close(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _stream(self, blob: Blob, start: int, length: int, chunked: bool, segment: bool = False) -> None:
        served = Served(blob.filename or blob.path.name, start, start, self.rec.status if self.rec else 200,
                        opened=time.monotonic())
        with self.fake._lock:
            self.fake.served.append(served)
        try:
            self._stream_body(blob, start, length, chunked, segment, served)
        finally:
            served.closed = time.monotonic()
            self._after_served(blob)

    def _after_served(self, blob: Blob) -> None:
        """The etag_change_after fault: count the blob's served bytes, re-upload it once past N."""
        f = self.fake
        with f._lock:
            limit = f.faults.etag_change_after
            if limit is None:
                return
            total = sum(s.end - s.start for s in f.served if s.name == (blob.filename or blob.path.name))
            if total >= limit:
                f.faults.etag_change_after = None
                blob.mtime += 1
                blob.etag = '"' + hashlib.md5(blob.etag.encode()).hexdigest() + '"'

    def _expire_link(self, expire_at: int | None) -> None:
        sig = getattr(self, "_sig", None)
        if expire_at is not None and sig:
            with self.fake._lock:
                self.fake._expired.add(sig)

    def _stream_body(self, blob: Blob, start: int, length: int, chunked: bool, segment: bool,
                     served: Served) -> None:
        f = self.fake
        faults = f.faults
        d, st = faults.drop_after, faults.stall_after
        drop_at = d if d is not None and d < length and faults.take("drop_times") else None
        slow = faults.slow_segment_rate if segment and faults.slow_segment_rate and \
            faults.take("slow_segment_times") else None
        sd, se = faults.segment_drop_after, faults.segment_expire_after
        if segment and sd is not None and sd < length and faults.take("segment_drop_times"):
            drop_at = sd if drop_at is None else min(drop_at, sd)
        expire_at = se if segment and se is not None and se < length and faults.take("segment_expire_times") else None
        if expire_at is not None:
            drop_at = expire_at if drop_at is None else min(drop_at, expire_at)
        stall_at = st if st is not None and st < length and faults.take("stall_times") else None
        corrupt = length > 0 and faults.take("corrupt_times")
        sent = 0

        def out(b: bytes) -> None:
            if chunked:
                self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
            else:
                self.wfile.write(b)

        with open(blob.path, "rb") as fh:
            fh.seek(start)
            while sent < length:
                if f._stopping.is_set():
                    raise _Abort
                n = min(MiB, length - sent)
                if drop_at is not None:
                    if sent >= drop_at:
                        self._expire_link(expire_at)
                        self._hard_close()
                        raise _Abort
                    n = min(n, drop_at - sent)
                if stall_at is not None:
                    if sent >= stall_at:
                        f._stopping.wait(faults.stall_seconds)
                        stall_at = None
                        continue
                    n = min(n, stall_at - sent)
                rate = slow or faults.rate
                if rate:
                    n = max(1, min(n, rate // 10 or 1))
                buf = fh.read(n)
                if not buf:
                    break
                if corrupt and sent + len(buf) >= length:
                    buf = buf[:-1] + bytes([buf[-1] ^ 0xFF])
                # Counted before the write: a reader that has the bytes always finds them recorded,
                # and a failed write counts as served (the strict side for "no byte fetched twice").
                served.end = start + sent + len(buf)
                out(buf)
                sent += len(buf)
                if faults.etag_change_after is not None:
                    self._after_served(blob)
                if rate and sent < length:
                    f._stopping.wait(len(buf) / rate)
            if drop_at is not None and sent >= drop_at and sent < length:
                self._expire_link(expire_at)
                self._hard_close()
                raise _Abort
            if faults.extra_bytes:
                extra = faults.extra_bytes
                while extra > 0 and not f._stopping.is_set():
                    k = min(extra, MiB)
                    out(b"\x00" * k)
                    extra -= k
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


# --------------------------------------------------------------------------- CLI


def main() -> None:
    ap = argparse.ArgumentParser(description="Run a fake Civitai with a demo model.")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--size", type=int, default=8 * MiB)
    args = ap.parse_args()
    fake = FakeCivitai(args.root)
    fake.port = args.port
    fake.start()
    fake.add_model(4201, "Example Realism XL", "Checkpoint")
    a = fake.add_version(4201, 98001, "v1.0", size=args.size, base_model="SDXL 1.0")
    b = fake.add_version(4201, 130072, "v2.0", size=args.size, base_model="SDXL 1.0")
    fake.add_model(5001, "Ünïcode LoRA", "LORA")
    c = fake.add_version(5001, 50011, "v1", size=MiB, filename="ünïcode_lora_v1.safetensors", require_auth=True)
    print(f"fake civitai on {fake.base_url}  (token: good-token)")
    for vid, info in ((98001, a), (130072, b), (50011, c)):
        print(f"  {fake.base_url}/api/download/models/{vid}  sha256={info['sha256']}  {info['filename']}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
