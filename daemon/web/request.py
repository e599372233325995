"""Request plumbing shared by the web routes: greenlet-local bottle state, off-hub calls, parameters,
bounded body reads, JSON errors and tokens."""
import hashlib
import hmac

import bottle
import gevent
import gevent.local

from ..manifest import strict_json
from ..states import Status, UpdateState

MAX_BODY = 32 << 20
MAX_LIMIT = 1000
STATES = [s.value for s in Status]
UPDATE_STATES = [s.value for s in UpdateState]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PREVIEW_TYPES = {".png": "image/png", ".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".webp": "image/webp",
                 ".gif": "image/gif"}

bottle.BaseRequest.MEMFILE_MAX = MAX_BODY


def _greenlet_local_property():
    store = gevent.local.local()

    def fget(_):
        try:
            return store.var
        except AttributeError:
            raise RuntimeError("Request context not initialized.") from None

    def fset(_, value):
        store.var = value

    def fdel(_):
        del store.var

    return property(fget, fset, fdel, "greenlet-local property")


# bottle keeps the current request and response in threading.local, which is one slot shared by every
# greenlet of the hub unless gevent monkey-patches threading (the daemon does not: research/stack.md §2).
# A handler that yields (every _db call does) would then answer with another request's status and
# headers. Give each greenlet its own slot instead.
bottle.LocalRequest.environ = _greenlet_local_property()
for _name in ("_status_line", "_status_code", "_cookies", "_headers", "body"):
    setattr(bottle.LocalResponse, _name, _greenlet_local_property())


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _db(fn, *args, **kwargs):
    """Run a blocking (database or CPU-heavy) call off the hub; its exception is re-raised here."""
    def call():
        try:
            return True, fn(*args, **kwargs)
        except BaseException as exc:  # carried back to the greenlet (gevent would print it otherwise)
            return False, exc
    ok, value = gevent.get_hub().threadpool.apply(call)
    if not ok:
        raise value
    return value


def _digits(raw):
    return raw.isascii() and raw.isdigit()


def _int_param(name, default, minimum=0, maximum=None):
    raw = bottle.request.query.get(name)
    if raw is None:  # absent; an empty value ("?limit=") is a typo to report, not a silent default
        return default
    if not _digits(raw) or len(raw) > 18:
        raise ApiError(400, f"{name} must be a non-negative integer, got {raw[:40]!r}")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        raise ApiError(400, f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _id(raw):
    if not _digits(raw) or len(raw) > 18 or int(raw) == 0:
        raise ApiError(400, f"download id must be a positive integer, got {raw[:40]!r}")
    return int(raw)


BODY_STEP = 16 << 10  # bytes per read between yields to the hub


def _read_body():
    """The raw request body, at most MAX_BODY bytes, read cooperatively (API and /jsonrpc alike).

    Bottle's own body reader de-chunks a chunked body byte by byte on the hub
    (1 MB held /healthz, the WebSocket, the watchdog and SIGTERM for ~20 s;
    issue 11 item 15). gevent's wsgi.input already de-chunks; reading it in
    small steps with a yield between them keeps the hub serving everyone else.
    """
    environ = bottle.request.environ
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY >> 20} MiB")
    stream, parts, size = environ["wsgi.input"], [], 0
    while size <= MAX_BODY:
        try:
            part = stream.read(BODY_STEP)
        except (OSError, ValueError) as exc:  # gevent: bad chunk framing, or the client went away
            raise ApiError(400, f"could not read the request body ({str(exc)[:80] or type(exc).__name__})") from None
        if not part:
            break
        parts.append(part)
        size += len(part)
        gevent.sleep(0)
    if size > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY >> 20} MiB")
    return b"".join(parts)


def _decode(raw):
    """JSON from the raw body (runs off the hub: a 30 MB body takes a while)."""
    if not raw.strip():
        raise ApiError(400, "empty body: send a JSON item object (Content-Type: application/json)")
    try:
        return strict_json(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ApiError(400, "body must be UTF-8 JSON") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON ({str(exc)[:120]})") from None


def _bearer(request):
    header = request.get_header("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _matches(given, expected):
    # compare_digest on equal-length digests: no timing signal about the token's length or prefix.
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest(),
                               hashlib.sha256(expected.encode("utf-8", "surrogateescape")).digest())


def token_role(settings, given):
    """'admin', 'viewer', or None (refused) for a token a client sent ('' or None: none)."""
    admin, viewer = settings.api_token, settings.viewer_token
    if not admin and not viewer:
        return "admin"
    if given and admin and _matches(given, admin):
        return "admin"
    if given and viewer and _matches(given, viewer):
        return "viewer"
    if not admin:  # only a viewer token configured: the admin side stays open
        return "admin" if not given else None
    return None
