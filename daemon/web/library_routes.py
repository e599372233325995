"""The library's routes (SPEC §10): entries, previews from disk, the scan."""

import bottle

from .. import update_policy
from ..states import APPLY_MODES
from ..library import store
from ..sidecars import find_preview, read_plain
from .request import MAX_LIMIT, PREVIEW_TYPES, ApiError, _db, _decode, _digits, _int_param, _read_body


def _id(raw, what="library entry id"):
    if not _digits(raw) or len(raw) > 18 or int(raw) == 0:
        raise ApiError(400, f"{what} must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def install(web, scanner):
    """Add the library routes to a WebApp; `scanner` is the daemon's library.scan.Scanner."""
    app = web.app
    get = lambda path, fn: app.route(path, "GET", web._guard(fn))  # noqa: E731
    post = lambda path, fn: app.route(path, "POST", web._guard(fn, write=True))  # noqa: E731

    def listing():
        query = bottle.request.query
        state = query.get("state") or None
        if state is not None and state not in store.STATES:
            raise ApiError(400, f"state must be one of {', '.join(store.STATES)}, got {state[:40]!r}")
        limit, offset = _int_param("limit", 50, 1, MAX_LIMIT), _int_param("offset", 0, 0, 10**12)
        items, total = _db(store.listing, type_=query.get("type") or None, q=query.getunicode("q") or None,
                           state=state, limit=limit, offset=offset)
        counts = _db(store.counts)
        return web._json({"items": items, "total": total, "limit": limit, "offset": offset, "counts": counts})

    def one(entry_id):
        return web._json(store.entry_dict(_db(store.get, _id(entry_id))))

    def preview(entry_id):
        row = _db(store.get, _id(entry_id))
        found = _db(find_preview, row.path) if not row.missing else None
        if found is None or found.suffix.lower() not in PREVIEW_TYPES:
            raise ApiError(404, f"library entry {entry_id} has no preview image")
        data = read_plain(found)
        if data is None:  # a link (to any file on the machine), a FIFO, a folder: never served
            raise ApiError(404, f"library entry {entry_id} has no preview image")
        response = bottle.HTTPResponse(data, content_type=PREVIEW_TYPES[found.suffix.lower()])
        response.set_header("Cache-Control", "private, no-cache")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        return response

    def scan_status():
        return web._json(scanner.status())

    def scan_start():
        raw = _read_body()
        body = _decode(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be {"paths": [folders or files under library.roots]}, or empty for all')
        paths = body.get("paths")
        if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths)):
            raise ApiError(400, "paths must be a list of folders or files under library.roots")
        try:
            scan_id, started = _db(scanner.start, paths or None)
        except ValueError as exc:  # a well-formed body naming a path the library does not hold: 404, not 400
            raise ApiError(404, str(exc)) from None
        if not started:
            bottle.response.set_header("Location", "library/scan")
            return web._json({"error": f"scan {scan_id} is already running; follow it with GET /api/library/scan",
                              "scan": scan_id}, 409)
        return web._json({"scan": scan_id}, 202)

    def set_policy(model_id):
        body = _decode(_read_body())
        if not isinstance(body, dict) or "policy" not in body:
            raise ApiError(400, 'body must be {"policy": "notify" | "alongside" | "replace" | "ignore" | null}')
        try:
            policy = _db(update_policy.set_policy, _id(model_id, "model id"), body["policy"])
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return web._json({"modelId": int(model_id), "policy": policy})

    def apply_updates():
        body = _decode(_read_body())
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be {"ids": [update ids]} or {"all": true}, with an optional "mode"')
        ids, everything, mode = body.get("ids"), body.get("all") is True, body.get("mode")
        well_formed = isinstance(ids, list) and ids and all(
            isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)
        if ("ids" in body or not everything) and not well_formed:
            raise ApiError(400, 'send {"ids": [update ids]} (positive integers) or {"all": true}')
        if "all" in body and not isinstance(body["all"], bool):
            raise ApiError(400, f'"all" must be true or false, got {body["all"]!r:.40}')
        if "mode" in body and mode not in APPLY_MODES:
            raise ApiError(400, f'"mode" must be one of {", ".join(APPLY_MODES)}, got {mode!r:.40}')
        if web.updates is None:
            raise ApiError(503, "the update checker is not running")
        try:
            result = _db(web.updates.apply, None if everything else ids, everything, mode)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return web._json(result, 202)

    get("/api/library", listing)
    get("/api/library/scan", scan_status)
    post("/api/library/scan", scan_start)
    get("/api/library/<entry_id>", one)
    # <img> tags cannot send headers: this read-only route also takes ?token=, like the downloads' one.
    app.route("/api/library/<entry_id>/preview", "GET", web._guard(preview, query_token=True))
    app.route("/api/library/models/<model_id>/policy", "PUT", web._guard(set_policy, write=True))
    post("/api/updates/apply", apply_updates)
