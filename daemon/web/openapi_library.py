"""The library's part of the OpenAPI document (SPEC §10): entries and the scan."""
from ..states import APPLY_MODES, MODEL_POLICIES
from .openapi_build import (IMG_TOKEN, INT, LIMIT, OFFSET, STR, error_body, get_op, image_body, json_body, nullable,
                            obj, page, path_id, query_param, ref, write_op)

ENTRY_ID = path_id("entry_id", "library entry id")
MODEL_ID = path_id("model_id", "Civitai model id")
NULL_INT = nullable(INT)
NULL_STR = nullable(STR)

SCHEMAS = {
    "LibraryEntry": obj({
        "id": INT, "path": STR, "root": STR, "size": INT, "sha256": NULL_STR, "modelId": NULL_INT,
        "modelVersionId": NULL_INT, "model_name": NULL_STR, "version_name": NULL_STR, "type": NULL_STR,
        "base_model": NULL_STR, "published_at": NULL_STR, "missing": {"type": "boolean"},
        "source": {"type": "string", "enum": ["downloaded", "sidecar", "civitai", "unknown"]},
        "download_id": NULL_INT, "preview": NULL_STR, "nsfw_level": NULL_INT,
    }, required=["id", "path", "size", "sha256", "modelId", "modelVersionId", "model_name", "version_name", "type",
                 "base_model", "source", "missing"]),
    "LibraryScan": obj({
        "state": {"type": "string", "enum": ["idle", "running", "done", "failed"]},
        "id": INT, "files": INT, "files_done": INT, "bytes": INT, "bytes_done": INT, "rate": {"type": "number"},
        "eta": nullable({"type": "number"}), "new": INT, "changed": INT, "missing": INT, "identified": INT,
        "unknown": INT, "hashed": INT, "api_calls": INT, "started_at": NULL_STR, "finished_at": NULL_STR,
        "errors": {"type": "array", "items": obj({"path": NULL_STR, "error": STR})},
    }, required=["state"]),
}
SCHEMAS["LibraryList"] = dict(page(ref("LibraryEntry")))
SCHEMAS["LibraryList"]["properties"] = dict(SCHEMAS["LibraryList"]["properties"], counts=obj({
    "by_type": {"type": "object", "additionalProperties": INT},
    "by_base_model": {"type": "object", "additionalProperties": INT},
    "identified": INT, "unknown": INT, "missing": INT}))


def paths():
    filters = [query_param("type", STR, "Civitai model type, any case (LORA, Checkpoint …)"),
               query_param("q", STR, "text in the path, model or version name, or a whole SHA256"),
               query_param("state", {"type": "string", "enum": ["identified", "unknown", "missing"]}),
               LIMIT, OFFSET]
    not_found = {"404": error_body("no library entry with this id")}
    return {
        "/api/library": {"get": get_op("the model files the user has (SPEC §10), newest first, with counts by type "
                                       "and base model", json_body(ref("LibraryList"), "one page"),
                                       params=filters, op_id="listLibrary")},
        "/api/library/{entry_id}": {"get": get_op("one library entry", json_body(ref("LibraryEntry"), "the entry"),
                                                  params=[ENTRY_ID], op_id="getLibraryEntry", extra=not_found)},
        "/api/library/{entry_id}/preview": {"get": get_op(
            "the entry's preview image sidecar, read from disk", image_body("the image"), params=[ENTRY_ID, IMG_TOKEN],
            op_id="getLibraryPreview", extra=not_found)},
        "/api/library/models/{model_id}/policy": {"put": write_op(
            "set a model's update policy override (null: back to update_check.policy)", "200",
            json_body(obj({"modelId": INT, "policy": nullable(STR)}), "stored"), "setModelPolicy",
            body=obj({"policy": nullable({"type": "string", "enum": list(MODEL_POLICIES)})}, required=["policy"]),
            params=[MODEL_ID])},
        "/api/updates/apply": {"post": write_op(
            "enqueue chosen updates: ids, or all pending ones except base-model changes",
            "202", json_body(obj({"ids": {"type": "array", "items": INT}, "updates": {"type": "array", "items": INT},
                                  "skipped": {"type": "array", "items": obj({"id": INT, "reason": STR})}},
                                 required=["ids"]), "the download ids"),
            "applyUpdates", body=dict(obj({"ids": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                                   "minItems": 1},
                                           "all": {"type": "boolean"},
                                           "mode": {"type": "string", "enum": list(APPLY_MODES)}}),
                                      # ids, or all: true (then ids, if sent, must still be well formed)
                                      anyOf=[{"required": ["ids"]},
                                             {"required": ["all"], "properties": {"all": {"enum": [True]}}}]),
            extra={"404": error_body("no update with one of these ids"),
                   "503": error_body("the update checker is not running")})},
        "/api/library/scan": {
            "get": get_op("the running or last library scan ({\"state\": \"idle\"} before the first)",
                          json_body(ref("LibraryScan"), "the scan"), op_id="getLibraryScan"),
            "post": write_op("start a library scan of every root, or of `paths` under them", "202",
                             json_body(obj({"scan": INT}, required=["scan"]), "started"), "startLibraryScan",
                             body=obj({"paths": nullable({"type": "array", "items": {"type": "string", "minLength": 1},
                                                          "description": "null or absent: every root"})}),
                             body_required=False,  # no body: scan every root
                             extra={"404": error_body("a path outside every library root"),
                                    "409": error_body("a scan is already running (its id is in `scan`)")}),
        },
    }

