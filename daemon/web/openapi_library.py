"""The library's part of the OpenAPI document (SPEC §10): entries and the scan."""
from ..states import APPLY_MODES, MODEL_POLICIES
from .openapi import (ERR_400, ERR_401, ERR_403, INT, JSON, LIMIT, OFFSET, STR, _error, _get, _json_body, _nullable,
                      _obj, _page, _post, _ref)

ENTRY_ID = {"name": "entry_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}, "description": "library entry id"}
NULL_INT = _nullable(INT)
NULL_STR = _nullable(STR)

SCHEMAS = {
    "LibraryEntry": _obj({
        "id": INT, "path": STR, "root": STR, "size": INT, "sha256": NULL_STR, "modelId": NULL_INT,
        "modelVersionId": NULL_INT, "model_name": NULL_STR, "version_name": NULL_STR, "type": NULL_STR,
        "base_model": NULL_STR, "published_at": NULL_STR, "missing": {"type": "boolean"},
        "source": {"type": "string", "enum": ["downloaded", "sidecar", "civitai", "unknown"]},
        "download_id": NULL_INT, "preview": NULL_STR, "nsfw_level": NULL_INT,
    }, required=["id", "path", "size", "sha256", "modelId", "modelVersionId", "model_name", "version_name", "type",
                 "base_model", "source", "missing"]),
    "LibraryScan": _obj({
        "state": {"type": "string", "enum": ["idle", "running", "done", "failed"]},
        "id": INT, "files": INT, "files_done": INT, "bytes": INT, "bytes_done": INT, "rate": {"type": "number"},
        "eta": _nullable({"type": "number"}), "new": INT, "changed": INT, "missing": INT, "identified": INT,
        "unknown": INT, "hashed": INT, "api_calls": INT, "started_at": NULL_STR, "finished_at": NULL_STR,
        "errors": {"type": "array", "items": _obj({"path": NULL_STR, "error": STR})},
    }, required=["state"]),
}
SCHEMAS["LibraryList"] = dict(_page(_ref("LibraryEntry")))
SCHEMAS["LibraryList"]["properties"] = dict(SCHEMAS["LibraryList"]["properties"], counts=_obj({
    "by_type": {"type": "object", "additionalProperties": INT},
    "by_base_model": {"type": "object", "additionalProperties": INT},
    "identified": INT, "unknown": INT, "missing": INT}))


def _optional_body(op):
    op["requestBody"]["required"] = False  # no body: scan every root
    return op


def paths():
    filters = [{"name": "type", "in": "query", "required": False, "schema": STR,
                "description": "Civitai model type, any case (LORA, Checkpoint …)"},
               {"name": "q", "in": "query", "required": False, "schema": STR,
                "description": "text in the path, model or version name, or a whole SHA256"},
               {"name": "state", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["identified", "unknown", "missing"]}},
               LIMIT, OFFSET]
    not_found = {"404": _error("no library entry with this id")}
    return {
        "/api/library": {"get": _get("the model files the user has (SPEC §10), newest first, with counts by type "
                                     "and base model", _json_body(_ref("LibraryList"), "one page"),
                                     params=filters, op_id="listLibrary")},
        "/api/library/{entry_id}": {"get": _get("one library entry", _json_body(_ref("LibraryEntry"), "the entry"),
                                                params=[ENTRY_ID], op_id="getLibraryEntry", extra=not_found)},
        "/api/library/{entry_id}/preview": {"get": _get(
            "the entry's preview image sidecar, read from disk",
            {"description": "the image", "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                     for t in ("image/png", "image/jpeg", "image/webp",
                                                               "image/gif")}},
            params=[ENTRY_ID, {"name": "token", "in": "query", "required": False, "schema": STR,
                               "description": "api_token or viewer_token, for <img> tags"}],
            op_id="getLibraryPreview", extra=not_found)},
        "/api/library/models/{model_id}/policy": {"put": {
            "summary": "set a model's update policy override (null: back to update_check.policy)",
            "operationId": "setModelPolicy",
            "parameters": [{"name": "model_id", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 1}, "description": "Civitai model id"}],
            "requestBody": {"required": True, "content": {JSON: {"schema": _obj(
                {"policy": _nullable({"type": "string", "enum": list(MODEL_POLICIES)})}, required=["policy"])}}},
            "responses": {"200": _json_body(_obj({"modelId": INT, "policy": _nullable(STR)}), "stored"),
                          "400": ERR_400, "401": ERR_401, "403": ERR_403}}},
        "/api/updates/apply": {"post": _post(
            "enqueue chosen updates: ids, or all pending ones except base-model changes",
            "202", _json_body(_obj({"ids": {"type": "array", "items": INT}, "updates": {"type": "array", "items": INT},
                                    "skipped": {"type": "array", "items": _obj({"id": INT, "reason": STR})}},
                                   required=["ids"]), "the download ids"),
            "applyUpdates", body=dict(_obj({"ids": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                                    "minItems": 1},
                                            "all": {"type": "boolean"},
                                            "mode": {"type": "string", "enum": list(APPLY_MODES)}}),
                                      # ids, or all: true (then ids, if sent, must still be well formed)
                                      anyOf=[{"required": ["ids"]},
                                             {"required": ["all"], "properties": {"all": {"enum": [True]}}}]),
            extra={"404": _error("no update with one of these ids"),
                   "503": _error("the update checker is not running")})},
        "/api/library/scan": {
            "get": _get("the running or last library scan ({\"state\": \"idle\"} before the first)",
                        _json_body(_ref("LibraryScan"), "the scan"), op_id="getLibraryScan"),
            "post": _optional_body(_post("start a library scan of every root, or of `paths` under them", "202",
                          _json_body(_obj({"scan": INT}, required=["scan"]), "started"), "startLibraryScan",
                          body=_obj({"paths": _nullable({"type": "array", "items": {"type": "string", "minLength": 1},
                                                               "description": "null or absent: every root"})}),
                          extra={"404": _error("a path outside every library root"),
                                 "409": _error("a scan is already running (its id is in `scan`)")})),
        },
    }

