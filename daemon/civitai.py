"""The Civitai API client and item resolution (SPEC §5, §9).

The token goes as `Authorization: Bearer` to Civitai's own hosts only, never as
a query parameter and never to a storage host.
"""
import datetime
import json
import logging
import math
import threading
from urllib.parse import parse_qs, urlsplit

import requests

from . import http
from .errors import TOKEN_HELP, EarlyAccess, PermanentError, TransientError
from .filenames import CIVITAI_HOSTS, civitai_ids, sanitize_filename
from .redact import scrub
from .pacing import Pacer

log = logging.getLogger("daemon.civitai")

PRIMARY_TYPES = ("Model", "Pruned Model", "Diffusion Model", "UNet")


class NotOnCivitai(PermanentError):
    """The model or version does not exist (any more) on Civitai."""


def civitai_hosts(base_url):
    """Hosts whose URLs name Civitai models and versions (the token's origins are `http.civitai_origins`)."""
    return {(urlsplit(base_url).hostname or "").lower(), *CIVITAI_HOSTS}


def parse_time(text):
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _obj(value):
    """`value` when it is a JSON object, else an empty one: a malformed answer reads as missing fields."""
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None


def _str(value):
    return value if isinstance(value, str) else None


def newest_version(model):
    """The newest published version: by publishedAt, else createdAt, else id — not list position."""
    versions = [v for v in _list(_obj(model).get("modelVersions")) if isinstance(v, dict) and _int(v.get("id"))]
    if not versions:
        return None
    epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return max(versions, key=lambda v: (parse_time(v.get("publishedAt")) or parse_time(v.get("createdAt"))
                                        or epoch, v["id"]))


def primary_file(version):
    files = [f for f in _list(_obj(version).get("files")) if isinstance(f, dict)]
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
    for file in _list(_obj(version).get("files")):
        if not isinstance(file, dict):
            continue
        meta = _obj(file.get("metadata"))
        if "fileId" in query and str(file.get("id")) != query["fileId"]:
            continue
        if "type" in query and file.get("type") != query["type"]:
            continue
        if any(k in query and str(meta.get(k)) != query[k] for k in ("format", "size", "fp")):
            continue
        return file
    return None


def file_sha256(file):
    hashes = _obj(_obj(file).get("hashes"))
    for key, value in hashes.items():
        if key.upper() == "SHA256" and isinstance(value, str) and len(value) == 64:
            return value.lower()
    return None


class CivitaiClient:
    """GET calls to Civitai's public REST API with retries on 429/5xx."""

    MAX_ANSWER = 64 << 20  # a models page with many images is a few MB; more is not an API answer

    def __init__(self, settings, stop=None, pacer=None):
        self.base = settings.civitai_base_url.rstrip("/")
        self.token = settings.civitai_token
        self.hosts = civitai_hosts(self.base)
        self.credentials = http.civitai_credentials(self.base, self.token)
        self.retries = min(settings.retries, 3)
        self.backoff = settings.backoff
        self.backoff_max = settings.backoff_max
        self.timeout = settings.timeout
        self.stop = stop or threading.Event()  # set at shutdown: a retry wait ends with Cancelled
        self._sessions = http.Sessions(Accept="application/json")
        # Fleet mode: one REST call a second for the fleet together; a turn lasts the wait and the call.
        self.pacer = pacer or Pacer(hold=2 * self.timeout + 10)

    def get(self, path, params=None):
        """JSON from `{base}/api/v1/{path}`; raises TransientError / PermanentError / NotOnCivitai / Cancelled."""
        retrying = http.retrying(self.retries + 1, self.backoff, self.backoff_max, self.stop, jitter=False)
        body = retrying(self._get_once, path, params)
        if not isinstance(body, dict):  # every GET answer is an object (the bulk POSTs answer lists)
            raise PermanentError(f"Civitai's API sent {type(body).__name__} for {path} where an object was expected; "
                                 "retry later, and report it if it persists")
        return body

    def _get_once(self, path, params):
        return self._send("GET", path, params=params)

    def post_once(self, path, body):
        """One POST of JSON to `{base}/api/v1/{path}` (the bulk by-hash lookups); no retries here."""
        return self._send("POST", path, data=json.dumps(body), headers={"Content-Type": "application/json"})

    def _send(self, method, path, headers=None, **kwargs):
        url = f"{self.base}/api/v1/{path}"
        # In fleet mode the turn lasts until the answer's headers came: the next call is paced from then.
        with self.pacer.turn(self.stop) as ok:
            if not ok:
                raise TransientError("stopped while waiting for the fleet's Civitai API pace")
            try:
                response = self._sessions.get().request(
                    method, url, headers={**(headers or {}), **self.credentials.headers_for(url)},
                    timeout=self.timeout, allow_redirects=False, stream=True, **kwargs)
            except requests.exceptions.RequestException as exc:
                raise TransientError(f"Civitai API: "
                                     f"{http.network_problem(exc, urlsplit(url).hostname, self.timeout)}") from None
        with response:
            return self._answer(response, path)

    def _answer(self, response, path):
        status = response.status_code
        ctype = response.headers.get("Content-Type", "")
        ok = status == 200
        limit = self.MAX_ANSWER if ok else http.ERROR_BODY_LIMIT
        data, whole = http.read_body(response, limit, self.timeout, deadline=None if ok else self.timeout)
        if ok and not whole:
            raise TransientError(f"Civitai API answer for {path} was cut short (stalled, reset or over "
                                 f"{limit >> 20} MB); trying again")
        body = None
        if "json" in ctype and whole:
            try:
                body = json.loads(data)
            except ValueError:
                body = None
        message = body.get("error") if isinstance(body, dict) else None
        if status == 429 or status >= 500:
            raise TransientError(f"Civitai API answered {status}",
                                 retry_after=http.retry_after(response.headers.get("Retry-After")))
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
    return civitai_ids(url, hosts)


def describe(version, model=None, url=None):
    """The fields a download stores from a version (and optionally its model) JSON."""
    version, model = _obj(version), _obj(model)
    model_info = _obj(version.get("model"))
    file = chosen_file(version, url)
    size = None
    size_kb = (file or {}).get("sizeKB")
    # NaN, infinities, negatives or absurd sizes (over 1 PB) are no size at all.
    if isinstance(size_kb, (int, float)) and not isinstance(size_kb, bool) and math.isfinite(size_kb) \
            and 0 < size_kb < 2**40:
        size = round(size_kb * 1024)
    return {
        "version_id": _int(version.get("id")),
        "model_id": _int(version.get("modelId")) or _int(model.get("id")),
        "model_name": _str(model_info.get("name")) or _str(model.get("name")),
        "version_name": _str(version.get("name")),
        "base_model": _str(version.get("baseModel")),
        "model_type": _str(model_info.get("type")) or _str(model.get("type")),
        "api_filename": sanitize_filename(_str(file.get("name"))) if file else None,
        "api_size": size,
        "api_sha256": file_sha256(file),
    }


def early_access_until(version):
    """The end of an active early-access window, or None."""
    version = _obj(version)
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
        try:
            return self._resolve(row)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            # Every field is read defensively; this is the net under that for answers of a shape
            # nobody foresaw, so the item fails with a message instead of staying "downloading".
            raise PermanentError(f"Civitai's API sent an answer the daemon cannot read ({type(exc).__name__}); "
                                 "retry later, and report it if it persists") from None

    def _resolve(self, row):
        model_id, version_id = self._ids(row)
        model = None
        if not version_id:
            model = self.client.model(model_id)
            newest = newest_version(model)
            if newest is None:
                raise NotOnCivitai(f"model {model_id} on Civitai has no published version to download "
                                   "(deleted, archived or unpublished)")
            version_id = _int(newest["id"])
        version = self.client.version(version_id)
        fields = describe(version, model, row.url)
        until = early_access_until(version)
        if until:
            raise EarlyAccess(f"version {version_id} is in early access until {until.isoformat()}; "
                              "the daemon waits and downloads it then", until)
        # Scrubbed before it is stored: the database and the .civitai.info sidecar never hold a URL's token.
        fields["civitai_info"] = json.dumps(scrub(version), separators=(",", ":"))
        fields["url"] = download_url(self.settings.civitai_base_url, version_id)
        return fields


def preview_image(version):
    """The first still image of a version: (url, nsfwLevel) or (None, None)."""
    for image in _list(_obj(version).get("images")):
        if isinstance(image, dict) and image.get("url") and image.get("type", "image") == "image":
            return _str(image["url"]), _int(image.get("nsfwLevel"))
    return None, None
