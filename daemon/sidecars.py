"""`<stem>.civitai.info` and `<stem>.preview.<ext>` beside a completed file (the A1111 /
Civitai Helper convention). A failed sidecar is logged, never fails the download."""
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import requests

from . import USER_AGENT
from .civitai import preview_image

log = logging.getLogger("daemon.sidecars")

MAX_PREVIEW = 32 << 20
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


def write(model_path, civitai_info, fetcher=None, settings=None):
    """Write both sidecars; returns the preview path or None."""
    info_path, stem = paths_for(model_path)
    try:
        version = json.loads(civitai_info)
        tmp = info_path.with_name(f".{info_path.name}.tmp")
        tmp.write_text(json.dumps(version, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, info_path)
    except (OSError, ValueError) as exc:
        log.warning("could not write %s: %s", info_path, exc)
        return None
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
    with requests.Session() as session:
        session.trust_env = False  # no .netrc or proxy credentials for an image host
        with session.get(url, headers={"User-Agent": USER_AGENT}, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise ValueError(f"preview answered {response.status_code}")
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            ext = IMAGE_TYPES.get(ctype) or (_ext_from_url(url) if ctype in ("", "application/octet-stream")
                                             else None)
            if not ext:
                raise ValueError(f"preview is not an image ({ctype or 'no content type'})")
            target = base.with_name(f"{base.name}.preview.{ext}")
            part = target.with_name(f".{target.name}.part")
            try:
                size = 0
                with open(part, "wb") as handle:
                    for chunk in response.iter_content(1 << 20):
                        size += len(chunk)
                        if size > MAX_PREVIEW:
                            raise ValueError("preview image is larger than 32 MB")
                        handle.write(chunk)
                expected = response.headers.get("Content-Length")
                if expected and expected.isdigit() and int(expected) != size:
                    raise ValueError("preview image was cut short")
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
            return target


def _ext_from_url(url):
    path = urlsplit(url).path.lower()
    for ext in ("png", "jpeg", "jpg", "webp", "gif"):
        if path.endswith("." + ext):
            return ext
    return None
