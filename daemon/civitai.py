"""The Civitai API client and item resolution (SPEC §5, §9).

The token goes as `Authorization: Bearer` to Civitai's own hosts only, never as
a query parameter and never to a storage host.
"""
import datetime
import json
import logging
import re
import threading
from urllib.parse import parse_qs, urlsplit

import requests
import tenacity

from . import USER_AGENT
from .errors import TOKEN_HELP, EarlyAccess, PermanentError, TransientError
from .manifest import CIVITAI_HOSTS, sanitize_filename

log = logging.getLogger("daemon.civitai")

PRIMARY_TYPES = ("Model", "Pruned Model", "Diffusion Model", "UNet")


class NotOnCivitai(PermanentError):
    """The model or version does not exist (any more) on Civitai."""


def civitai_hosts(base_url):
    """Hosts that may receive the Civitai token."""
    return {(urlsplit(base_url).hostname or "").lower(), *CIVITAI_HOSTS}


def parse_time(text):
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def newest_version(model):
    """The newest published version: by publishedAt, else createdAt, else id — not list position."""
    versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict) and v.get("id")]
    if not versions:
        return None
    epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return max(versions, key=lambda v: (parse_time(v.get("publishedAt")) or parse_time(v.get("createdAt"))
                                        or epoch, v["id"]))


def primary_file(version):
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    for test in (lambda f: f.get("primary") is True, lambda f: f.get("type") in PRIMARY_TYPES, lambda f: True):
        for file in files:
            if test(file):
                return file
    return None


FILE_PARAMS = ("type", "format", "size", "fp", "fileId")


def chosen_file(version, url=None):
    """The file a download URL asks for: its ?type=/format=/size=/fp=/fileId= pick a non-primary file."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(url or "").query).items() if k in FILE_PARAMS}
    if not query:
        return primary_file(version)
    for file in version.get("files") or []:
        if not isinstance(file, dict):
            continue
        meta = file.get("metadata") or {}
        if "fileId" in query and str(file.get("id")) != query["fileId"]:
            continue
        if "type" in query and file.get("type") != query["type"]:
            continue
        if any(k in query and str(meta.get(k)) != query[k] for k in ("format", "size", "fp")):
            continue
        return file
    return None


def file_sha256(file):
    hashes = (file or {}).get("hashes") or {}
    for key, value in hashes.items():
        if key.upper() == "SHA256" and isinstance(value, str) and len(value) == 64:
            return value.lower()
    return None


class CivitaiClient:
    """GET calls to Civitai's public REST API with retries on 429/5xx."""

    def __init__(self, settings, stop=None):
        self.base = settings.civitai_base_url.rstrip("/")
        self.token = settings.civitai_token
        self.hosts = civitai_hosts(self.base)
        self.retries = min(settings.retries, 3)
        self.backoff = settings.backoff
        self.backoff_max = settings.backoff_max
        self.timeout = settings.timeout
        self.stop = stop or threading.Event()
        self._local = threading.local()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
            self._local.session = session
        return session

    def get(self, path, params=None):
        """JSON from `{base}/api/v1/{path}`; raises TransientError / PermanentError / NotOnCivitai."""
        def wait(state):
            exc = state.outcome.exception()
            if getattr(exc, "retry_after", None) is not None:
                return exc.retry_after
            return min(self.backoff_max, self.backoff * 2 ** (state.attempt_number - 1))

        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.retries + 1), wait=wait,
                                     sleep=lambda s: self.stop.wait(s), reraise=True,
                                     retry=tenacity.retry_if_exception_type(TransientError))
        return retrying(self._get_once, path, params)

    def _get_once(self, path, params):
        url = f"{self.base}/api/v1/{path}"
        headers = {}
        if self.token and (urlsplit(url).hostname or "").lower() in self.hosts:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self._session().get(url, params=params, headers=headers, timeout=self.timeout,
                                           allow_redirects=False)
        except requests.exceptions.Timeout:
            raise TransientError(f"Civitai API did not answer within {self.timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"Civitai API unreachable: {type(exc).__name__}") from None
        status = response.status_code
        ctype = response.headers.get("Content-Type", "")
        body = None
        if "json" in ctype:
            try:
                body = response.json()
            except ValueError:
                body = None
        message = body.get("error") if isinstance(body, dict) else None
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            raise TransientError(f"Civitai API answered {status}",
                                 retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
        if status in (401, 403):
            raise PermanentError(TOKEN_HELP if not self.token else
                                 f"Civitai refused the API call ({status}); check civitai_token")
        if status == 404:
            raise NotOnCivitai(f"Civitai: {message or 'not found'} ({path}); it was deleted or unpublished, "
                               "or the id is wrong")
        if status != 200 or body is None:
            # Civitai's maintenance page is HTML with status 200.
            raise TransientError(f"Civitai API sent no JSON (status {status}, {ctype or 'no content type'}); "
                                 "it may be under maintenance")
        return body

    def model(self, model_id):
        return self.get(f"models/{int(model_id)}")

    def version(self, version_id):
        return self.get(f"model-versions/{int(version_id)}")

    def by_hash(self, sha256):
        return self.get(f"model-versions/by-hash/{sha256}")

    def models(self, ids):
        body = self.get("models", params={"ids": ",".join(str(i) for i in ids), "limit": 100, "nsfw": "true"})
        return body.get("items") or [] if isinstance(body, dict) else []


def download_url(base, version_id):
    return f"{base.rstrip('/')}/api/download/models/{int(version_id)}"


def ids_from_url(url, hosts):
    """(modelId, modelVersionId) named by a download or model-page URL on one of `hosts`."""
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    if not host or not any(host == h or host.endswith("." + h) for h in hosts):
        return None, None
    match = re.match(r"^/api/download/models/(\d+)", parts.path)
    if match:
        return None, int(match.group(1))
    match = re.match(r"^/models/(\d+)", parts.path)
    if match:
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        return int(match.group(1)), int(version) if version.isdigit() else None
    return None, None


def describe(version, model=None, url=None):
    """The fields a download stores from a version (and optionally its model) JSON."""
    model_info = version.get("model") or {}
    file = chosen_file(version, url)
    size = None
    if file and isinstance(file.get("sizeKB"), (int, float)):
        size = round(file["sizeKB"] * 1024)
    return {
        "version_id": version.get("id"),
        "model_id": version.get("modelId") or (model or {}).get("id"),
        "model_name": model_info.get("name") or (model or {}).get("name"),
        "version_name": version.get("name"),
        "base_model": version.get("baseModel"),
        "model_type": model_info.get("type") or (model or {}).get("type"),
        "api_filename": sanitize_filename(file.get("name")) if file else None,
        "api_size": size,
        "api_sha256": file_sha256(file),
    }


def early_access_until(version):
    """The end of an active early-access window, or None."""
    for key in ("earlyAccessEndsAt", "earlyAccessDeadline"):
        when = parse_time(version.get(key))
        if when and when > datetime.datetime.now(datetime.timezone.utc):
            return when
    paid = version.get("paidAccess") or {}
    when = parse_time(paid.get("endsAt")) if isinstance(paid, dict) else None
    if when and when > datetime.datetime.now(datetime.timezone.utc):
        return when
    return None


class Resolver:
    """Fill in what an item lacks (URL, name, hash, type) from the Civitai API."""

    def __init__(self, settings, client):
        self.settings = settings
        self.client = client

    def _ids(self, row):
        url_model, url_version = ids_from_url(row.url, self.client.hosts)
        return row.model_id or url_model, row.version_id or url_version

    def wants(self, row):
        """Whether this download names a Civitai model or version (by id, AIR or a Civitai URL)."""
        return any(self._ids(row))

    def resolve(self, row):
        """Fields to store on the download; raises EarlyAccess / PermanentError / TransientError."""
        model_id, version_id = self._ids(row)
        model = None
        if not version_id:
            model = self.client.model(model_id)
            newest = newest_version(model)
            if newest is None:
                raise NotOnCivitai(f"model {model_id} on Civitai has no published version to download "
                                   "(deleted, archived or unpublished)")
            version_id = newest["id"]
        version = self.client.version(version_id)
        fields = describe(version, model, row.url)
        until = early_access_until(version)
        if until:
            raise EarlyAccess(f"version {version_id} is in early access until {until.isoformat()}; "
                              "the daemon waits and downloads it then", until)
        fields["civitai_info"] = json.dumps(version, separators=(",", ":"))
        fields["url"] = download_url(self.settings.civitai_base_url, version_id)
        return fields


def preview_image(version):
    """The first still image of a version: (url, nsfwLevel) or (None, None)."""
    for image in version.get("images") or []:
        if isinstance(image, dict) and image.get("url") and image.get("type", "image") == "image":
            return image["url"], image.get("nsfwLevel")
    return None, None
