"""File names from every source, made safe the same way, and the one parser of Civitai URLs (SPEC §5, §6).

Pure: strings in, strings out; no I/O.
"""
import hashlib
import re
import unicodedata
from urllib.parse import parse_qs, unquote, urlsplit

MAX_NAME_BYTES = 255
CIVITAI_HOSTS = ("civitai.com", "civitai.red")

DRIVE = re.compile(r"^[A-Za-z]:")


def has_control(text):
    """Whether `text` holds NUL, control or format characters."""
    return any(unicodedata.category(ch) in ("Cc", "Cf") or ch == "\x00" for ch in text)


def filename_problem(name):
    """Why `name` is not a plain, safe file name, or None when it is."""
    if not isinstance(name, str) or not name:
        return "expected a non-empty string"
    if len(name) > MAX_NAME_BYTES:  # cheap first: a 10 MB name need not be scanned
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "must be a plain file name without / or \\"
    if name.strip() in (".", ".."):
        return "must not be . or .."
    if has_control(name):
        return "must not contain NUL or control characters"
    if DRIVE.match(name):
        return "must not start with a drive letter"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if name != name.strip():
        return "must not start or end with spaces"
    return None


# The daemon's own names beside a download (`<name>.<id>.part`, `.part.json`, `.part.ranges`): a final
# name ending so could pass for another download's part, so it is refused in manifests and renamed
# when a server chose it ("model.bin.part" → "model.bin_part").
_RESERVED = re.compile(r"\.part(\.json|\.ranges(\.tmp)?)?$", re.IGNORECASE)


def reserved_problem(name):
    """Why `name` is reserved for the daemon's part files, or None."""
    if isinstance(name, str) and _RESERVED.search(name):
        return "must not end in .part, .part.json or .part.ranges (the daemon's names for unfinished downloads)"
    return None


def sanitize_filename(name):
    """Turn a server-supplied name into a safe plain file name, or None."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in name)
    previous = None
    while name != previous:  # "C: ..x. " needs several rounds
        previous = name
        name = DRIVE.sub("", name.strip().strip("."))
    if not name or name in (".", ".."):
        return None
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:-1] + dot + ext) if stem and len(ext) < 16 else name[:-1]
    name = name.strip()
    name = _RESERVED.sub(lambda m: "_part" + (m.group(1) or ""), name)
    return name if filename_problem(name) is None else None


def content_disposition_name(header):
    """The file name in a Content-Disposition header (filename* before filename)."""
    if not header:
        return None
    star = None
    plain = None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        value = value.strip()
        if key == "filename*":
            charset, _, rest = value.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                star = unquote(encoded.strip('"'), encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                star = None
        elif key == "filename":
            plain = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
            try:  # http.client decodes raw header bytes as Latin-1; Civitai sends UTF-8
                plain = plain.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
    return sanitize_filename(star) or sanitize_filename(plain)


def name_from_signed_url(url):
    """A name carried in a signed storage URL (R2 response-content-disposition, B2 b2ContentDisposition)."""
    query = parse_qs(urlsplit(url).query)
    for key in ("response-content-disposition", "b2ContentDisposition"):
        if key in query:
            name = content_disposition_name(query[key][0])
            if name:
                return name
    return None


def name_from_url(url):
    """The URL's last path segment as a safe name, or None."""
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return sanitize_filename(segment)


def fit_name(filename, suffix):
    """`filename + suffix`, shortened (the same way every time) to fit the 255-byte name limit."""
    name = filename + suffix
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    tag = "~" + hashlib.sha256(filename.encode()).hexdigest()[:12]
    keep = filename.encode()[:MAX_NAME_BYTES - len(tag) - len(suffix.encode())].decode("utf-8", "ignore")
    return keep + tag + suffix


def host_in(host, hosts):
    """Whether `host` is one of `hosts` or a subdomain of one (`notcivitai.com` is not `civitai.com`)."""
    host = (host or "").lower().rstrip(".")
    return bool(host) and any(host == h or host.endswith("." + h) for h in hosts)


def civitai_ids(url, hosts=CIVITAI_HOSTS):
    """(modelId, modelVersionId) named by a download or model-page URL on one of `hosts`, else (None, None)."""
    try:
        parts = urlsplit(url or "")
        host = parts.hostname
    except ValueError:
        return None, None
    if not host_in(host, hosts):
        return None, None
    match = re.match(r"^/api/download/models/(\d+)", parts.path)
    if match:
        return None, int(match.group(1))
    match = re.match(r"^/models/(\d+)", parts.path)
    if match:
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        return int(match.group(1)), int(version) if version.isdigit() else None
    return None, None


def is_civitai_page(url, hosts=CIVITAI_HOSTS):
    """A Civitai /models/… page link (not a file): it is resolved through the API instead of fetched."""
    try:
        parts = urlsplit(url or "")
        return host_in(parts.hostname, hosts) and parts.path.startswith("/models/")
    except ValueError:
        return False
