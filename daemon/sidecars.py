"""`<stem>.civitai.info` and `<stem>.preview.<ext>` beside a completed download or a library file (the
A1111 / Civitai Helper convention). Missing ones are written, existing ones never replaced — except a
`.civitai.info` that still holds what the daemon wrote, when newer metadata arrives. A failed sidecar is
logged, never fails the download."""
import json
import logging
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import requests

from . import http
from .civitai import preview_image
from .atomic import write_new

log = logging.getLogger("daemon.sidecars")

MAX_PREVIEW = 32 << 20
PREVIEW_DEADLINE = 60  # seconds for the whole image
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}


def paths_for(model_path):
    model_path = Path(model_path)
    stem = model_path.name.rsplit(".", 1)[0] if "." in model_path.name else model_path.name
    return model_path.with_name(f"{stem}.civitai.info"), stem


def find_preview(model_path):
    """The preview sidecar of a model file, if one exists."""
    _, stem = paths_for(model_path)
    for ext in ("png", "jpeg", "jpg", "webp", "gif"):
        candidate = Path(model_path).with_name(f"{stem}.preview.{ext}")
        if os.path.exists(candidate):  # False (not OSError) when the name is too long
            return candidate
    return None


def read_preview(model_path, root):
    """(bytes, extension) of a model file's preview, only when it is a plain file under `root`: a link
    (to a file outside, or a folder link leading outside) is never followed. None otherwise."""
    preview = find_preview(model_path)
    if preview is None:
        return None
    root = Path(os.path.realpath(root))
    folder = Path(os.path.realpath(preview.parent))
    if folder != root and root not in folder.parents:
        return None
    data = read_plain(folder / preview.name)
    return None if data is None else (data, preview.suffix.lower())


def read_plain(path):
    """The bytes of `path` when it is a plain file of at most MAX_PREVIEW bytes, opened without following
    a link (a link, FIFO or folder is never read); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PREVIEW:
            return None
        return handle.read(MAX_PREVIEW)


def write_missing(model_path, civitai_info, settings=None):
    """Write whichever of the two sidecars is absent (SPEC §10), for a download and a library file alike;
    an existing sidecar — the user's, or another tool's — is never replaced. The preview path or None."""
    info_path, stem = paths_for(model_path)
    try:
        version = json.loads(civitai_info)
        if not os.path.lexists(info_path):
            try:  # fails if another writer got there first: theirs stays
                write_new(info_path, _info_bytes(version), replace=False)
            except FileExistsError:
                pass
    except (OSError, ValueError) as exc:
        log.warning("could not write %s: %s", info_path, exc)
        return None
    if find_preview(model_path) is not None:
        return None
    return _preview(model_path, version, stem, settings)


def refresh_info(model_path, written_info, new_info):
    """Replace `<stem>.civitai.info` with `new_info` only while it still holds what the daemon wrote from
    `written_info` for this download: a sidecar edited by hand (or replaced by another tool) stays. True
    when replaced."""
    info_path, _ = paths_for(model_path)
    try:
        current = read_plain(info_path)
        if current is None or current != _info_bytes(json.loads(written_info)):
            return False
        write_new(info_path, _info_bytes(json.loads(new_info)))
        return True
    except (OSError, ValueError) as exc:
        log.warning("could not refresh %s: %s", info_path, exc)
        return False


def _info_bytes(version):
    """The one way the daemon writes a version JSON as a sidecar (so refresh_info can recognise its own)."""
    return json.dumps(version, indent=2, ensure_ascii=False).encode("utf-8")


def _preview(model_path, version, stem, settings):
    """Fetch the version's first image as `<stem>.preview.<ext>`; the path, or None (logged)."""
    url, _ = preview_image(version)
    if not url:
        return None
    try:
        return _fetch_preview(url, Path(model_path).with_name(stem), settings)
    except (OSError, requests.RequestException, ValueError) as exc:
        log.warning("no preview for %s: %s", model_path, str(exc)[:200])
        return None


def _fetch_preview(url, base, settings):
    """Download an image with care: http(s) only, no credentials, an image type, at most 32 MB, atomic."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("preview URL is not http(s)")
    timeout = min(settings.timeout, 15) if settings else 15
    with http.new_session() as session, \
            session.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
        if response.status_code != 200:
            raise ValueError(f"preview answered {response.status_code}")
        ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        ext = IMAGE_TYPES.get(ctype) or (_ext_from_url(url) if ctype in ("", "application/octet-stream") else None)
        if not ext:
            raise ValueError(f"preview is not an image ({ctype or 'no content type'})")
        # The stall rule and an overall deadline: a trickling image host must not hold the worker slot.
        data, whole = http.read_body(response, MAX_PREVIEW, timeout, deadline=PREVIEW_DEADLINE)
        if len(data) >= MAX_PREVIEW:
            raise ValueError("preview image is larger than 32 MB")
        if not whole:
            raise ValueError(f"preview image stalled or took over {PREVIEW_DEADLINE} s")
        expected = response.headers.get("Content-Length")
        if expected and expected.isdigit() and int(expected) != len(data):
            raise ValueError("preview image was cut short")
    target = base.with_name(f"{base.name}.preview.{ext}")
    try:
        write_new(target, data, replace=False)  # a preview that appeared meanwhile (or a link) stays
    except FileExistsError:
        return None
    return target


def _ext_from_url(url):
    path = urlsplit(url).path.lower()
    for ext in ("png", "jpeg", "jpg", "webp", "gif"):
        if path.endswith("." + ext):
            return ext
    return None
