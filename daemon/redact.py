"""Secrets out of URLs, JSON and text: the one place that knows which query parameters are secret.

A download's URL is stored split: the public part in clear (shown by the API,
the key a human reads) and the secret part (secret query parameters and
`user:password@`) sealed with a key kept in a file beside the database, so a
restart can fetch the full URL again while the database alone never holds a
token in clear (docs/reliability.md, SECURITY.md).
"""
import base64
import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Matched by exact name (case-insensitive): `monkey` or `author` are not secrets.
SECRET_PARAMS = frozenset({
    "token", "access_token", "refresh_token", "id_token", "api_key", "apikey", "key", "password", "passwd",
    "pass", "secret", "client_secret", "signature", "sig", "auth", "authorization", "credential", "session",
    "policy", "key-pair-id", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "x-goog-security-token", "se", "sp", "sv", "skoid", "sktid",
})
# Azure SAS parameters other than `sig` only describe the grant: they are secret only alongside `sig`.
_SAS_ONLY = frozenset({"se", "sp", "sv", "skoid", "sktid"})
MASK = "***"
_PARAM_ALTERNATIVES = "|".join(re.escape(p) for p in sorted(SECRET_PARAMS - _SAS_ONLY, key=len, reverse=True))
TEXT_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s'\",}]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(rf"(?i)([?&;](?:{_PARAM_ALTERNATIVES})=)[^&\s'\"<>]+"),
    re.compile(r"(?i)(/bot)\d+:[A-Za-z0-9_-]+"),  # Telegram bot tokens inside API URLs
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^@\s/'\"]+(?=@)"),  # the password of user:pass@
]


def _secret(name, names):
    name = name.lower()
    return name in SECRET_PARAMS and (name not in _SAS_ONLY or "sig" in names)


def split_url(url):
    """(public URL, secret part) — the secret part is '' when the URL carries none."""
    if not url:
        return url, ""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {k.lower() for k, _ in query}
    public = [(k, v) for k, v in query if not _secret(k, names)]
    secret = [(k, v) for k, v in query if _secret(k, names)]
    userinfo, _, host = parts.netloc.rpartition("@")
    if not secret and not userinfo:
        return url, ""
    clean = urlunsplit((parts.scheme, host, parts.path, urlencode(public), parts.fragment))
    # The whole original query, byte for byte: a signed URL's parameters keep their order and encoding.
    return clean, json.dumps({"query": parts.query if secret else None, "userinfo": userinfo},
                             separators=(",", ":"))


def join_url(public, secret):
    """The full URL again from `split_url`'s two halves."""
    if not secret:
        return public
    data = json.loads(secret)
    parts = urlsplit(public)
    netloc = f"{data['userinfo']}@{parts.netloc}" if data.get("userinfo") else parts.netloc
    query = data["query"] if data.get("query") is not None else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_url(url):
    """The URL without its secret query parameters and user:password@ (for storage and display)."""
    return split_url(url)[0]


def redact_text(text):
    """Free text (an error message, a log line) with token-shaped parts masked."""
    if not text:
        return text
    for pattern in TEXT_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def scrub(node):
    """A copy of JSON with secret query parameters and user:pass@ removed from every URL in it."""
    if isinstance(node, dict):
        return {key: scrub(value) for key, value in node.items()}
    if isinstance(node, list):
        return [scrub(value) for value in node]
    if isinstance(node, str) and node[:8].lower().startswith(("http://", "https://")):
        return redact_url(node)
    return node


class Sealer:
    """Seals a URL's secret part with a key from a file beside the database (HMAC-SHA256 keystream + tag).

    The database then holds no token in clear, and a copy of the database without the key file
    reveals none; the daemon itself can always open what it sealed.
    """

    def __init__(self, key):
        self._key = key

    @classmethod
    def for_database(cls, database):
        """The sealer whose key lives in `<database>.key` (created 0600 on first use)."""
        path = Path(f"{database}.key")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            key = path.read_bytes()
        else:
            key = os.urandom(32)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
        if len(key) < 32:
            raise ValueError(f"{path} is damaged (shorter than 32 bytes); move it away to make a new one "
                             "(downloads whose URL carried a token then need to be added again)")
        return cls(key)

    def _stream(self, nonce, length):
        out = bytearray()
        counter = 0
        while len(out) < length:
            out += hmac.new(self._key, b"s" + nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest()
            counter += 1
        return bytes(out[:length])

    def seal(self, secret):
        if not secret:
            return None
        nonce = os.urandom(16)
        data = secret.encode()
        body = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data))))
        tag = hmac.new(self._key, b"t" + nonce + body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(nonce + tag + body).decode()

    def open(self, sealed):
        """The secret part, or '' when there is none or it cannot be opened (another key)."""
        if not sealed:
            return ""
        raw = base64.urlsafe_b64decode(sealed.encode())
        nonce, tag, body = raw[:16], raw[16:32], raw[32:]
        if not hmac.compare_digest(tag, hmac.new(self._key, b"t" + nonce + body, hashlib.sha256).digest()[:16]):
            return ""
        return bytes(a ^ b for a, b in zip(body, self._stream(nonce, len(body)))).decode()

    def url_key(self, url):
        """A dedupe key for the full URL: equal URLs match, the secret stays unreadable."""
        return hmac.new(self._key, b"u" + url.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
