"""The OpenAPI 3 description of the HTTP API (SPEC §8), built as plain data.

Response schemas allow extra properties (the API may add fields); request
schemas mirror the manifest validation of SPEC §5, which rejects unknown fields.
"""
from ..manifest import ITEM_FIELDS, MAX_ITEMS, MAX_NAME_BYTES, MAX_PRIORITY
from ..events import CATALOGUE
from ..states import ACTIONS, ManifestStatus, Status, UpdateState

STATES = [s.value for s in Status]
MAX_ID = 2**31 - 1
MAX_LIMIT = 1000

JSON = "application/json"


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema):
    # OpenAPI 3.0.3: `nullable` does not widen an `enum`; null must be listed in it too.
    if "enum" in schema:
        schema = dict(schema, enum=[*schema["enum"], None])
    return dict(schema, nullable=True)


def _obj(properties, required=(), extra=True, **more):
    schema = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    schema.update(more)
    return schema


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
SHA = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}

# Control and format characters (Unicode Cc and Cf, Basic Multilingual Plane), which names must not contain.
_CTRL = ("\\x00-\\x1f\\x7f-\\x9f\\xad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891\\u08e2\\u180e"
         "\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb")
# One plain name: not . or .., no drive prefix, no / or \\, no control characters, no surrounding spaces.
_NAME = f"(?!\\.{{1,2}}(?:/|$))(?![A-Za-z]:)[^/\\\\{_CTRL}\\s](?:[^/\\\\{_CTRL}]*[^/\\\\{_CTRL}\\s])?"
_PORT = "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[0-5]?[0-9]{1,4}))?"
_SEGMENT = f"(?:\\.|{_NAME})"

ITEM = _obj({
    "url": {"type": "string", "maxLength": 8191,
            "pattern": f"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][A-Za-z0-9.-]*{_PORT}(?:[/?#][^\\s]*)?$",
            "description": "http or https URL of the file; may be omitted when modelVersionId, modelId or air is given"},
    "modelId": dict(ID, description="Civitai model id; alone, the model's newest version is resolved"),
    "modelVersionId": dict(ID, description="Civitai model version id"),
    "air": {"type": "string",
            "pattern": "^urn:air:[^:\\s]+:[^:\\s]+:civitai:[1-9][0-9]{0,8}(@[1-9][0-9]{0,8})?(\\.[A-Za-z0-9]+)?$",
            "example": "urn:air:sdxl:lora:civitai:328553@368189"},
    "sha256": dict(SHA, description="expected SHA256 (any case)"),
    "filename": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES,
                 "pattern": f"^{_NAME}$",
                 "description": "a plain file name: no / or \\, not . or .., no control characters, at most "
                                f"{MAX_NAME_BYTES} bytes"},
    "priority": {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY, "default": 0,
                 "description": "larger runs first; equal priorities run in arrival order"},
    "subdir": {"type": "string", "pattern": f"^(?:{_SEGMENT}(?:/+{_SEGMENT})*/*)?$",
               "description": "relative folder under download_dir (no .., not absolute)"},
}, extra=False, minProperties=1,
    # a source must be given, and not as null (null counts as absent for every field)
    anyOf=[{"required": [name], "properties": {name: {"type": "string" if name in ("url", "air") else "integer"}}}
           for name in ("url", "modelVersionId", "modelId", "air")],
    description="One item of a manifest (SPEC §5). Unknown fields are rejected; null means absent.")
for _field in ITEM["properties"].values():
    _field["nullable"] = True
assert set(ITEM["properties"]) == set(ITEM_FIELDS)

ITEM_LIST = {"type": "array", "items": _ref("Item"), "minItems": 1, "maxItems": MAX_ITEMS}

DOWNLOAD_PROPS = {
    "id": INT, "state": {"type": "string", "enum": STATES},
    "filename": _nullable(STR), "path": _nullable(STR), "subdir": _nullable(STR), "url": _nullable(STR),
    "sha256": _nullable(STR), "expected_sha256": _nullable(STR), "verified": BOOL,
    "bytes": INT, "total": _nullable(INT), "speed": NUM, "eta": _nullable(NUM), "priority": INT,
    "connections": dict(INT, description="connections open for it now (0 when not downloading)"),
    "segments": {"type": "array", "description": "while segmented: each segment's byte range (end exclusive) "
                 "and bytes received", "items": _obj({"start": INT, "end": INT, "done": INT},
                                                     required=["start", "end", "done"])},
    "manifest": _nullable(STR), "modelId": _nullable(INT), "modelVersionId": _nullable(INT),
    "model_name": _nullable(STR), "version_name": _nullable(STR), "base_model": _nullable(STR),
    "model_type": _nullable(STR), "error": _nullable(STR), "not_before": _nullable(TIME),
    "attempts": INT, "retries": INT, "parent_id": _nullable(INT),
    "created_at": _nullable(TIME), "started_at": _nullable(TIME), "finished_at": _nullable(TIME),
    "duration": _nullable(NUM), "average_speed": _nullable(NUM),
    "preview": _nullable(dict(STR, description="relative URL of the preview image the daemon serves "
                                              "(api/downloads/<id>/preview), null when there is none")),
    "nsfw_level": _nullable(dict(INT, description="Civitai's nsfwLevel of the preview image: 1 PG, 2 PG-13, "
                                                  "4 R, 8 X, 16 XXX")),
}
DOWNLOAD = _obj(DOWNLOAD_PROPS, required=["id", "state", "filename", "path", "url", "sha256", "verified", "bytes",
                                          "total", "priority", "manifest", "modelId", "modelVersionId", "error",
                                          "created_at", "finished_at"])
COMPLETED = {"allOf": [_ref("Download"), _obj({"duration": NUM, "average_speed": _nullable(NUM)},
                                              required=["duration", "average_speed"])]}

ACTIVE = _obj({"id": INT, "filename": _nullable(STR), "bytes": INT, "total": _nullable(INT), "speed": NUM,
               "eta": _nullable(NUM), "connections": INT, "segments": DOWNLOAD_PROPS["segments"]},
              required=["id", "bytes", "total", "speed", "eta"])
STATUS = _obj({
    "version": STR, "uptime": NUM, "workers": INT, "throttle": NUM,
    "counts": _obj({s: {"type": "integer", "minimum": 0} for s in STATES}, required=STATES),
    "active": {"type": "array", "items": ACTIVE},
    "role": {"type": "string", "enum": ["admin", "viewer"]},
    "states": {"type": "array", "items": {"type": "string", "enum": STATES}, "description": "every download state"},
    "actions": _obj({a: {"type": "array", "items": {"type": "string", "enum": STATES}} for a in ACTIONS},
                    description="each user action and the states it may start from"),
}, required=["version", "uptime", "workers", "throttle", "counts", "active", "states", "actions"])

METRICS = _obj({
    "downloads": INT, "completed": INT, "failed": INT, "bytes": INT, "average_speed": NUM,
    "retries": INT, "hash_mismatches": INT, "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
}, required=["downloads", "completed", "failed", "bytes", "average_speed", "retries", "hash_mismatches",
             "success_rate"])

MANIFEST = _obj({
    "id": INT, "manifest": STR, "status": {"type": "string", "enum": [s.value for s in ManifestStatus]},
    "items": {"type": "integer", "minimum": 0, "description": "number of items"},
    "errors": {"type": "array", "items": STR}, "received_at": _nullable(TIME), "finished_at": _nullable(TIME),
    "final_name": _nullable(STR),
}, required=["manifest", "status", "items", "errors", "received_at", "finished_at"])

UPDATE = _obj({
    "id": INT, "modelId": INT, "modelVersionId": INT, "model_name": _nullable(STR), "version_name": _nullable(STR),
    "previous_version_id": _nullable(INT), "detected_at": _nullable(TIME),
    "state": {"type": "string", "enum": [s.value for s in UpdateState]}, "reason": _nullable(STR),
    "sha256": _nullable(STR), "download_id": _nullable(INT), "not_before": _nullable(TIME),
    "base_model": _nullable(STR), "previous_base_model": _nullable(STR), "size": _nullable(INT),
    "mode": _nullable(STR), "policy": _nullable(STR), "replaced_to": _nullable(STR),
}, required=["id", "modelId", "modelVersionId", "model_name", "version_name", "previous_version_id", "detected_at",
             "state", "reason", "not_before"])

NODE = _obj({"node": STR, "last_heartbeat": _nullable(TIME), "started_at": _nullable(TIME),
             "active": {"type": "array", "items": INT, "description": "ids of the downloads it works on"}},
            required=["node", "last_heartbeat", "active"])

CHECK = _obj({"checked": INT, "updates": {"type": "array", "items": {"type": "object"}},
              "problems": {"type": "array", "items": STR}, "duration": NUM}, required=["checked", "updates"])


def _page(item):
    return _obj({"items": {"type": "array", "items": item}, "total": {"type": "integer", "minimum": 0},
                 "limit": {"type": "integer", "minimum": 1}, "offset": {"type": "integer", "minimum": 0}},
                required=["items", "total", "limit", "offset"])


EVENT = _obj({"event": {"type": "string", "enum": list(CATALOGUE)}, "time": TIME, "data": {"type": "object"}},
             required=["event", "time", "data"])

SCHEMAS = {
    "Error": _obj({"error": {"type": "string", "minLength": 1}}, required=["error"]),
    "Item": ITEM,
    "Batch": {"oneOf": [_obj({"items": ITEM_LIST}, required=["items"]), ITEM_LIST, _ref("Item")],
              "description": "a manifest body: an object with an items list, a bare list of items, or one item"},
    "Download": DOWNLOAD,
    "CompletedDownload": COMPLETED,
    "Status": STATUS,
    "Metrics": METRICS,
    "Manifest": MANIFEST,
    "Update": UPDATE,
    "UpdateCheck": CHECK,
    "DownloadList": _page(_ref("Download")),
    "CompletedList": _page(_ref("CompletedDownload")),
    "ManifestList": _page(_ref("Manifest")),
    "UpdateList": _page(_ref("Update")),
    "Node": NODE,
    "NodeList": _page(_ref("Node")),
    "Event": EVENT,
    "CivitaiInfo": _obj({"id": INT, "modelId": INT, "name": STR, "baseModel": STR,
                         "trainedWords": {"type": "array", "items": STR}, "description": _nullable(STR),
                         "model": {"type": "object"}, "images": {"type": "array", "items": {"type": "object"}},
                         "files": {"type": "array", "items": {"type": "object"}}},
                        description="Civitai's /api/v1/model-versions/{id} answer as stored at resolution"),
}


def _json_body(schema, description):
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description):
    return _json_body(_ref("Error"), description)


ERR_400 = _error("malformed body or parameter; the message names the field and the reason")
ERR_401 = _error("api_token is set and the request carries no valid Authorization: Bearer token")
ERR_403 = _error("a read-only viewer_token tried to change state")
ERR_404 = _error("no download with this id")
ERR_409 = _error("the download's current state does not allow this action")
ERR_413 = _error("body larger than 32 MiB")

LIMIT = {"name": "limit", "in": "query", "required": False, "description": "page size",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}}
OFFSET = {"name": "offset", "in": "query", "required": False, "description": "rows to skip (newest first)",
          "schema": {"type": "integer", "minimum": 0, "maximum": 10**12, "default": 0}}
STATE = {"name": "state", "in": "query", "required": False, "description": "only downloads in this state",
         "schema": {"type": "string", "enum": STATES}}
DOWNLOAD_ID = {"name": "download_id", "in": "path", "required": True,
               "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}}


def _get(summary, ok, params=(), op_id=None, public=False, extra=None):
    responses = {"200": ok}
    if params:
        responses["400"] = ERR_400
    if not public:
        responses["401"] = ERR_401
    responses.update(extra or {})
    op = {"summary": summary, "operationId": op_id, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if public:
        op["security"] = []
    return op


def _post(summary, ok_status, ok, op_id, body=None, params=(), extra=None):
    responses = {ok_status: ok, "400": ERR_400, "401": ERR_401, "403": ERR_403}
    responses.update(extra or {})
    op = {"summary": summary, "operationId": op_id, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        responses["413"] = ERR_413
    return op


def _jsonrpc():
    """aria2's JSON-RPC (SPEC §13): the secret is in-band (`token:<secret>` first param), not a header."""
    rpc_error = _obj({"jsonrpc": STR, "id": {}, "error": _obj({"code": INT, "message": STR}, required=["code", "message"])},
                     required=["error"])
    answer = {"oneOf": [_obj({"jsonrpc": STR, "id": {}, "result": {}}, required=["result"]), rpc_error,
                        {"type": "array", "items": {"type": "object"}}]}
    request = {"oneOf": [_obj({"jsonrpc": STR, "id": {}, "method": STR, "params": {"type": "array"}},
                              required=["method"]), {"type": "array", "items": {"type": "object"}}]}
    aria2_error = _json_body(rpc_error, "an aria2 error ({code, message}): unknown method, wrong parameters, "
                                        "Unauthorized (wrong token: the token is in-band, so never a 401), a dir "
                                        "or out outside the mapped folders")
    return {
        "post": {"summary": "aria2 JSON-RPC call, batch or system.multicall (aria2.addUri, tellStatus, …)",
                 "operationId": "jsonrpc", "security": [],
                 "requestBody": {"required": True, "content": {JSON: {"schema": request}}},
                 "responses": {"200": _json_body(answer, "the result (a batch answers a list)"), "400": aria2_error,
                               "401": _error("not used: a wrong token is an aria2 error with status 400"),
                               "403": _json_body(rpc_error, "no api_token is set and the request came from "
                                                            "another web site or host name"),
                               "413": ERR_413}},
        "options": {"summary": "CORS preflight for browser clients (AriaNg); allowed only when api_token is set",
                    "operationId": "jsonrpcPreflight", "security": [],
                    "responses": {"204": {"description": "CORS headers"},
                                  "403": _json_body(rpc_error, "no api_token set: cross-origin calls refused")}},
        "get": {"summary": "aria2 JSON-RPC over a WebSocket: calls as over POST, plus aria2.onDownload* "
                           "notifications ({\"method\", \"params\": [{\"gid\"}]}) to every client",
                "operationId": "jsonrpcSocket", "security": [],
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": _json_body(rpc_error, "a plain HTTP request without the WebSocket upgrade")}},
    }


def _paths():
    paths = {
        "/": {"get": {"summary": "redirect to the GUI", "operationId": "root", "security": [],
                      "responses": {"302": {"description": "Location: gui",
                                            "headers": {"Location": {"schema": STR}}}}}},
        "/gui": {"get": {"summary": "the Bootstrap GUI", "operationId": "gui", "security": [],
                         "responses": {"200": {"description": "the GUI page",
                                               "content": {"text/html": {"schema": STR}}}}}},
        "/static/{path}": {"get": {
            "summary": "client.js, the GUI's files and the local Bootstrap files", "operationId": "static",
            "security": [],
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": STR}],
            "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": STR}}},
                          "404": _error("no such file")}}},
        "/healthz": {"get": {
            "summary": "liveness of the watcher, the workers and the database", "operationId": "healthz",
            "security": [],
            "responses": {"200": _json_body(_obj({"ok": {"type": "boolean", "enum": [True]}}, required=["ok"]),
                                            "all parts alive"),
                          "503": _json_body(_obj({"ok": {"type": "boolean", "enum": [False]},
                                                  "problems": {"type": "array", "items": STR}},
                                                 required=["ok", "problems"]), "what is wrong")}}},
        "/metrics": {"get": {
            "summary": "metrics in Prometheus text format", "operationId": "prometheus", "security": [],
            "responses": {"200": {"description": "Prometheus exposition format",
                                  "content": {"text/plain": {"schema": STR}}}}}},
        "/api/status": {"get": _get("version, uptime, workers, throttle, counts by state, active downloads",
                                    _json_body(_ref("Status"), "the daemon's status"), op_id="getStatus")},
        "/api/download": {"post": _post(
            "enqueue one item (SPEC §5)", "202", _json_body(_obj({"id": INT}, required=["id"]), "queued"),
            "addDownload", body=_ref("Item"))},
        "/api/batch": {"post": _post(
            "enqueue a manifest body (SPEC §5)", "202",
            _json_body(_obj({"ids": {"type": "array", "items": INT}}, required=["ids"]), "queued"),
            "addBatch", body=_ref("Batch"))},
        "/api/downloads": {"get": _get("downloads, newest first", _json_body(_ref("DownloadList"), "one page"),
                                       params=[STATE, LIMIT, OFFSET], op_id="listDownloads")},
        "/api/downloads/{download_id}": {"get": _get(
            "one download", _json_body(_ref("Download"), "the download"), params=[DOWNLOAD_ID],
            op_id="getDownload", extra={"404": ERR_404})},
        "/api/downloads/{download_id}/info": {"get": _get(
            "the download's stored Civitai version JSON (trainedWords, description, images, files, model), "
            "token-like URL parameters removed", _json_body(_ref("CivitaiInfo"), "the stored metadata"),
            params=[DOWNLOAD_ID], op_id="getDownloadInfo",
            extra={"404": _error("no such download, or no stored Civitai metadata")})},
        "/api/downloads/{download_id}/preview": {"get": _get(
            "the preview image sidecar (<stem>.preview.<ext>) of a completed download, read from disk",
            {"description": "the image", "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                     for t in ("image/png", "image/jpeg", "image/webp",
                                                               "image/gif")}},
            params=[DOWNLOAD_ID, {"name": "token", "in": "query", "required": False, "schema": STR,
                                  "description": "api_token or viewer_token, for <img> tags that cannot set "
                                                 "headers"}],
            op_id="getDownloadPreview", extra={"404": _error("no such download, or it has no preview image")})},
        "/api/completed": {"get": _get(
            "completed downloads with path, sha256, bytes, duration, average speed",
            _json_body(_ref("CompletedList"), "one page"), params=[LIMIT, OFFSET], op_id="listCompleted")},
        "/api/metrics": {"get": _get("totals", _json_body(_ref("Metrics"), "the totals"), op_id="getMetrics")},
        "/api/manifests": {"get": _get("manifests seen, with their status",
                                       _json_body(_ref("ManifestList"), "one page"), params=[LIMIT, OFFSET],
                                       op_id="listManifests")},
        "/api/updates": {"get": _get("detected model updates", _json_body(_ref("UpdateList"), "one page"),
                                     params=[LIMIT, OFFSET], op_id="listUpdates")},
        "/api/updates/check": {"post": _post(
            "run the model update check now", "200", _json_body(_ref("UpdateCheck"), "a summary of the check"),
            "checkUpdates", extra={"503": _error("the update checker is not running")})},
        "/api/nodes": {"get": _get("the daemons of the fleet (one with SQLite), their heartbeats and downloads",
                                   _json_body(_ref("NodeList"), "every node"), op_id="listNodes")},
        "/api/openapi.json": {"get": _get("this document", {"description": "OpenAPI 3 document",
                                                            "content": {JSON: {"schema": {"type": "object"}}}},
                                          op_id="openapi")},
        "/ws/downloads": {"get": {
            "summary": "WebSocket feed: a snapshot event with the status, then every event (SPEC §7)",
            "description": "Upgrade to a WebSocket. Messages are Event objects; the token may also be given "
                           "as ?token=. download.progress comes at most 4 times a second per download.",
            "operationId": "feed",
            "parameters": [{"name": "token", "in": "query", "required": False, "schema": STR,
                            "description": "api_token or viewer_token, for clients that cannot set headers"}],
            "responses": {"101": {"description": "switching to the WebSocket protocol; messages are Event objects",
                                  "content": {JSON: {"schema": _ref("Event")}}},
                          "400": _error("a plain HTTP request without the WebSocket upgrade"),
                          "401": ERR_401}}},
        "/jsonrpc": _jsonrpc(),
    }
    paths["/api/downloads/retry-failed"] = {"post": _post(
        "retry every failed download (after an outage)", "200",
        _json_body(_obj({"ids": {"type": "array", "items": INT}, "count": INT}, required=["ids", "count"]),
                   "the ids moved back to queued"), "retryFailed")}
    for action in ACTIONS:
        paths[f"/api/downloads/{{download_id}}/{action}"] = {"post": _post(
            f"{action} a download", "200", _json_body(_ref("Download"), "the download after the action"),
            f"{action}Download", params=[DOWNLOAD_ID], extra={"404": ERR_404, "409": ERR_409})}
    return paths


def document(version):
    """The OpenAPI 3.0 document for this daemon version."""
    from . import openapi_library
    return {
        "openapi": "3.0.3",
        "info": {"title": "civitai-daemon", "version": version,
                 "description": "Download manager daemon for Civitai model files. All responses are JSON; errors "
                                "are {\"error\": message} with a 4xx status."},
        "paths": {**_paths(), **openapi_library.paths()},
        "components": {
            "schemas": {**SCHEMAS, **openapi_library.SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "api_token (all routes) or viewer_token (GET routes "
                                                          "and the WebSocket) from config.yaml"}},
        },
        "security": [{"bearer": []}, {}],
    }
