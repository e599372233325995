"""Secrets out of URLs and text: the one place that knows which query parameters are secret."""
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAMS = re.compile(r"(token|key|secret|signature|auth|password|credential|x-amz-|sig$)", re.I)


def redact_url(url):
    """The URL with token-like query parameters and user:password@ removed (for storage and display)."""
    if not url:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SECRET_PARAMS.search(k)]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
