"""The OpenAPI 3 description of the HTTP API (SPEC §8), built as plain data.

Response schemas allow extra properties (the API may add fields); request
schemas mirror the manifest validation of SPEC §5, which rejects unknown fields.
"""
from ..manifest import ITEM_FIELDS, MAX_ITEMS, MAX_NAME_BYTES, MAX_PRIORITY
from ..events import CATALOGUE
from ..states import ACTIONS, ManifestStatus, Status, UpdateState
from .openapi_build import (BOOL, ERR_401, ERR_413, ID, IMG_TOKEN, INT, JSON, LIMIT, NUM, OFFSET, SHA, STR, TIME,
                            error_body, get_op, image_body, json_body, nullable, obj, page, path_id, query_param, ref,
                            token_param, write_op)

STATES = [s.value for s in Status]
ERR_404 = error_body("no download with this id")
ERR_409 = error_body("the download's current state does not allow this action")

# Control and format characters (Unicode Cc and Cf, Basic Multilingual Plane), which names must not contain.
_CTRL = ("\\x00-\\x1f\\x7f-\\x9f\\xad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891\\u08e2\\u180e"
         "\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb")
# One plain name: not . or .., no drive prefix, no / or \\, no control characters, no surrounding spaces.
_NAME = f"(?!\\.{{1,2}}(?:/|$))(?![A-Za-z]:)[^/\\\\{_CTRL}\\s](?:[^/\\\\{_CTRL}]*[^/\\\\{_CTRL}\\s])?"
_PORT = "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[0-5]?[0-9]{1,4}))?"
_SEGMENT = f"(?:\\.|{_NAME})"

ITEM = obj({
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

ITEM_LIST = {"type": "array", "items": ref("Item"), "minItems": 1, "maxItems": MAX_ITEMS}

DOWNLOAD_PROPS = {
    "id": INT, "state": {"type": "string", "enum": STATES},
    "filename": nullable(STR), "path": nullable(STR), "subdir": nullable(STR), "url": nullable(STR),
    "sha256": nullable(STR), "expected_sha256": nullable(STR), "verified": BOOL,
    "bytes": INT, "total": nullable(INT), "speed": NUM, "eta": nullable(NUM), "priority": INT,
    "connections": dict(INT, description="connections open for it now (0 when not downloading)"),
    "segments": {"type": "array", "description": "while segmented: each segment's byte range (end exclusive) "
                 "and bytes received", "items": obj({"start": INT, "end": INT, "done": INT},
                                                    required=["start", "end", "done"])},
    "manifest": nullable(STR), "modelId": nullable(INT), "modelVersionId": nullable(INT),
    "model_name": nullable(STR), "version_name": nullable(STR), "base_model": nullable(STR),
    "model_type": nullable(STR), "error": nullable(STR), "not_before": nullable(TIME),
    "attempts": INT, "retries": INT, "parent_id": nullable(INT),
    "created_at": nullable(TIME), "started_at": nullable(TIME), "finished_at": nullable(TIME),
    "duration": nullable(NUM), "average_speed": nullable(NUM),
    "preview": nullable(dict(STR, description="relative URL of the preview image the daemon serves "
                                              "(api/downloads/<id>/preview), null when there is none")),
    "nsfw_level": nullable(dict(INT, description="Civitai's nsfwLevel of the preview image: 1 PG, 2 PG-13, "
                                                  "4 R, 8 X, 16 XXX")),
}
DOWNLOAD = obj(DOWNLOAD_PROPS, required=["id", "state", "filename", "path", "url", "sha256", "verified", "bytes",
                                         "total", "priority", "manifest", "modelId", "modelVersionId", "error",
                                         "created_at", "finished_at"])
COMPLETED = {"allOf": [ref("Download"), obj({"duration": NUM, "average_speed": nullable(NUM)},
                                            required=["duration", "average_speed"])]}

ACTIVE = obj({"id": INT, "filename": nullable(STR), "bytes": INT, "total": nullable(INT), "speed": NUM,
              "eta": nullable(NUM), "connections": INT, "segments": DOWNLOAD_PROPS["segments"]},
             required=["id", "bytes", "total", "speed", "eta"])
STATUS = obj({
    "version": STR, "uptime": NUM, "workers": INT, "throttle": NUM,
    "counts": obj({s: {"type": "integer", "minimum": 0} for s in STATES}, required=STATES),
    "active": {"type": "array", "items": ACTIVE},
    "role": {"type": "string", "enum": ["admin", "viewer"]},
    "states": {"type": "array", "items": {"type": "string", "enum": STATES}, "description": "every download state"},
    "actions": obj({a: {"type": "array", "items": {"type": "string", "enum": STATES}} for a in ACTIONS},
                   description="each user action and the states it may start from"),
}, required=["version", "uptime", "workers", "throttle", "counts", "active", "states", "actions"])

METRICS = obj({
    "downloads": INT, "completed": INT, "failed": INT, "bytes": INT, "average_speed": NUM,
    "retries": INT, "hash_mismatches": INT, "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
}, required=["downloads", "completed", "failed", "bytes", "average_speed", "retries", "hash_mismatches",
             "success_rate"])

MANIFEST = obj({
    "id": INT, "manifest": STR, "status": {"type": "string", "enum": [s.value for s in ManifestStatus]},
    "items": {"type": "integer", "minimum": 0, "description": "number of items"},
    "errors": {"type": "array", "items": STR}, "received_at": nullable(TIME), "finished_at": nullable(TIME),
    "final_name": nullable(STR),
}, required=["manifest", "status", "items", "errors", "received_at", "finished_at"])

UPDATE = obj({
    "id": INT, "modelId": INT, "modelVersionId": INT, "model_name": nullable(STR), "version_name": nullable(STR),
    "previous_version_id": nullable(INT), "detected_at": nullable(TIME),
    "state": {"type": "string", "enum": [s.value for s in UpdateState]}, "reason": nullable(STR),
    "sha256": nullable(STR), "download_id": nullable(INT), "not_before": nullable(TIME),
    "base_model": nullable(STR), "previous_base_model": nullable(STR), "size": nullable(INT),
    "mode": nullable(STR), "policy": nullable(STR), "replaced_to": nullable(STR),
}, required=["id", "modelId", "modelVersionId", "model_name", "version_name", "previous_version_id", "detected_at",
             "state", "reason", "not_before"])

NODE = obj({"node": STR, "last_heartbeat": nullable(TIME), "started_at": nullable(TIME),
            "active": {"type": "array", "items": INT, "description": "ids of the downloads it works on"}},
           required=["node", "last_heartbeat", "active"])

CHECK = obj({"checked": INT, "updates": {"type": "array", "items": {"type": "object"}},
             "problems": {"type": "array", "items": STR}, "duration": NUM}, required=["checked", "updates"])


EVENT = obj({"event": {"type": "string", "enum": list(CATALOGUE)}, "time": TIME, "data": {"type": "object"}},
            required=["event", "time", "data"])

SCHEMAS = {
    "Error": obj({"error": {"type": "string", "minLength": 1}}, required=["error"]),
    "Item": ITEM,
    "Batch": {"oneOf": [obj({"items": ITEM_LIST}, required=["items"]), ITEM_LIST, ref("Item")],
              "description": "a manifest body: an object with an items list, a bare list of items, or one item"},
    "Download": DOWNLOAD,
    "CompletedDownload": COMPLETED,
    "Status": STATUS,
    "Metrics": METRICS,
    "Manifest": MANIFEST,
    "Update": UPDATE,
    "UpdateCheck": CHECK,
    "DownloadList": page(ref("Download")),
    "CompletedList": page(ref("CompletedDownload")),
    "ManifestList": page(ref("Manifest")),
    "UpdateList": page(ref("Update")),
    "Node": NODE,
    "NodeList": page(ref("Node")),
    "Event": EVENT,
    "CivitaiInfo": obj({"id": INT, "modelId": INT, "name": STR, "baseModel": STR,
                        "trainedWords": {"type": "array", "items": STR}, "description": nullable(STR),
                        "model": {"type": "object"}, "images": {"type": "array", "items": {"type": "object"}},
                        "files": {"type": "array", "items": {"type": "object"}}},
                       description="Civitai's /api/v1/model-versions/{id} answer as stored at resolution"),
}


STATE = query_param("state", {"type": "string", "enum": STATES}, "only downloads in this state")
DOWNLOAD_ID = path_id("download_id", maximum=10**18 - 1)


def _jsonrpc():
    """aria2's JSON-RPC (SPEC §13): the secret is in-band (`token:<secret>` first param), not a header."""
    rpc_error = obj({"jsonrpc": STR, "id": {}, "error": obj({"code": INT, "message": STR}, required=["code", "message"])},
                    required=["error"])
    answer = {"oneOf": [obj({"jsonrpc": STR, "id": {}, "result": {}}, required=["result"]), rpc_error,
                        {"type": "array", "items": {"type": "object"}}]}
    request = {"oneOf": [obj({"jsonrpc": STR, "id": {}, "method": STR, "params": {"type": "array"}},
                             required=["method"]), {"type": "array", "items": {"type": "object"}}]}
    aria2_error = json_body(rpc_error, "an aria2 error ({code, message}): unknown method, wrong parameters, "
                                        "Unauthorized (wrong token: the token is in-band, so never a 401), a dir "
                                        "or out outside the mapped folders")
    return {
        "post": {"summary": "aria2 JSON-RPC call, batch or system.multicall (aria2.addUri, tellStatus, …)",
                 "operationId": "jsonrpc", "security": [],
                 "requestBody": {"required": True, "content": {JSON: {"schema": request}}},
                 "responses": {"200": json_body(answer, "the result (a batch answers a list)"), "400": aria2_error,
                               "401": error_body("not used: a wrong token is an aria2 error with status 400"),
                               "403": json_body(rpc_error, "no api_token is set and the request came from "
                                                            "another web site or host name"),
                               "413": ERR_413}},
        "options": {"summary": "CORS preflight for browser clients (AriaNg); allowed only when api_token is set",
                    "operationId": "jsonrpcPreflight", "security": [],
                    "responses": {"204": {"description": "CORS headers"},
                                  "403": json_body(rpc_error, "no api_token set: cross-origin calls refused")}},
        "get": {"summary": "aria2 JSON-RPC over a WebSocket: calls as over POST, plus aria2.onDownload* "
                           "notifications ({\"method\", \"params\": [{\"gid\"}]}) to every client",
                "operationId": "jsonrpcSocket", "security": [],
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": json_body(rpc_error, "a plain HTTP request without the WebSocket upgrade")}},
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
                          "404": error_body("no such file")}}},
        "/healthz": {"get": {
            "summary": "liveness of the watcher, the workers and the database", "operationId": "healthz",
            "security": [],
            "responses": {"200": json_body(obj({"ok": {"type": "boolean", "enum": [True]}}, required=["ok"]),
                                           "all parts alive"),
                          "503": json_body(obj({"ok": {"type": "boolean", "enum": [False]},
                                                "problems": {"type": "array", "items": STR}},
                                               required=["ok", "problems"]), "what is wrong")}}},
        "/metrics": {"get": {
            "summary": "metrics in Prometheus text format", "operationId": "prometheus", "security": [],
            "responses": {"200": {"description": "Prometheus exposition format",
                                  "content": {"text/plain": {"schema": STR}}}}}},
        "/api/status": {"get": get_op("version, uptime, workers, throttle, counts by state, active downloads",
                                      json_body(ref("Status"), "the daemon's status"), op_id="getStatus")},
        "/api/download": {"post": write_op(
            "enqueue one item (SPEC §5)", "202", json_body(obj({"id": INT}, required=["id"]), "queued"),
            "addDownload", body=ref("Item"))},
        "/api/batch": {"post": write_op(
            "enqueue a manifest body (SPEC §5)", "202",
            json_body(obj({"ids": {"type": "array", "items": INT}}, required=["ids"]), "queued"),
            "addBatch", body=ref("Batch"))},
        "/api/downloads": {"get": get_op("downloads, newest first", json_body(ref("DownloadList"), "one page"),
                                         params=[STATE, LIMIT, OFFSET], op_id="listDownloads")},
        "/api/downloads/{download_id}": {"get": get_op(
            "one download", json_body(ref("Download"), "the download"), params=[DOWNLOAD_ID],
            op_id="getDownload", extra={"404": ERR_404})},
        "/api/downloads/{download_id}/info": {"get": get_op(
            "the download's stored Civitai version JSON (trainedWords, description, images, files, model), "
            "token-like URL parameters removed", json_body(ref("CivitaiInfo"), "the stored metadata"),
            params=[DOWNLOAD_ID], op_id="getDownloadInfo",
            extra={"404": error_body("no such download, or no stored Civitai metadata")})},
        "/api/downloads/{download_id}/preview": {"get": get_op(
            "the preview image sidecar (<stem>.preview.<ext>) of a completed download, read from disk",
            image_body("the image"), params=[DOWNLOAD_ID, IMG_TOKEN], op_id="getDownloadPreview",
            extra={"404": error_body("no such download, or it has no preview image")})},
        "/api/completed": {"get": get_op(
            "completed downloads with path, sha256, bytes, duration, average speed",
            json_body(ref("CompletedList"), "one page"), params=[LIMIT, OFFSET], op_id="listCompleted")},
        "/api/metrics": {"get": get_op("totals", json_body(ref("Metrics"), "the totals"), op_id="getMetrics")},
        "/api/manifests": {"get": get_op("manifests seen, with their status",
                                         json_body(ref("ManifestList"), "one page"), params=[LIMIT, OFFSET],
                                         op_id="listManifests")},
        "/api/updates": {"get": get_op("detected model updates", json_body(ref("UpdateList"), "one page"),
                                       params=[LIMIT, OFFSET], op_id="listUpdates")},
        "/api/updates/check": {"post": write_op(
            "run the model update check now", "200", json_body(ref("UpdateCheck"), "a summary of the check"),
            "checkUpdates", extra={"503": error_body("the update checker is not running")})},
        "/api/nodes": {"get": get_op("the daemons of the fleet (one with SQLite), their heartbeats and downloads",
                                     json_body(ref("NodeList"), "every node"), op_id="listNodes")},
        "/api/openapi.json": {"get": get_op("this document", {"description": "OpenAPI 3 document",
                                                              "content": {JSON: {"schema": {"type": "object"}}}},
                                            op_id="openapi")},
        "/ws/downloads": {"get": {
            "summary": "WebSocket feed: a snapshot event with the status, then every event (SPEC §7)",
            "description": "Upgrade to a WebSocket. Messages are Event objects; the token may also be given "
                           "as ?token=. download.progress comes at most 4 times a second per download.",
            "operationId": "feed",
            "parameters": [token_param("api_token or viewer_token, for clients that cannot set headers")],
            "responses": {"101": {"description": "switching to the WebSocket protocol; messages are Event objects",
                                  "content": {JSON: {"schema": ref("Event")}}},
                          "400": error_body("a plain HTTP request without the WebSocket upgrade"),
                          "401": ERR_401}}},
        "/jsonrpc": _jsonrpc(),
    }
    paths["/api/downloads/retry-failed"] = {"post": write_op(
        "retry every failed download (after an outage)", "200",
        json_body(obj({"ids": {"type": "array", "items": INT}, "count": INT}, required=["ids", "count"]),
                  "the ids moved back to queued"), "retryFailed")}
    for action in ACTIONS:
        paths[f"/api/downloads/{{download_id}}/{action}"] = {"post": write_op(
            f"{action} a download", "200", json_body(ref("Download"), "the download after the action"),
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
