"""The shapes both halves of the OpenAPI document are built from (web/openapi.py, web/openapi_library.py):
schema helpers, parameters, responses and operations, as plain data."""

MAX_ID = 2**31 - 1
MAX_LIMIT = 1000

JSON = "application/json"


def ref(name):
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema):
    # OpenAPI 3.0.3: `nullable` does not widen an `enum`; null must be listed in it too.
    if "enum" in schema:
        schema = dict(schema, enum=[*schema["enum"], None])
    return dict(schema, nullable=True)


def obj(properties, required=(), extra=True, **more):
    """An object schema; extra properties allowed unless `extra` is False."""
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


def page(item):
    """A list object (SPEC §8) of `item`."""
    return obj({"items": {"type": "array", "items": item}, "total": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1}, "offset": {"type": "integer", "minimum": 0}},
               required=["items", "total", "limit", "offset"])


def json_body(schema, description):
    """A response (or body) of JSON with `schema`."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_body(description):
    """An {"error": message} response."""
    return json_body(ref("Error"), description)


ERR_400 = error_body("malformed body or parameter; the message names the field and the reason")
ERR_401 = error_body("api_token is set and the request carries no valid Authorization: Bearer token")
ERR_403 = error_body("a read-only viewer_token tried to change state")
ERR_413 = error_body("body larger than 32 MiB")


def image_body(description):
    """A response carrying an image sidecar as read from disk."""
    return {"description": description, "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                    for t in ("image/png", "image/jpeg", "image/webp", "image/gif")}}


def query_param(name, schema, description=None):
    """An optional query parameter."""
    param = {"name": name, "in": "query", "required": False}
    if description:
        param["description"] = description
    param["schema"] = schema
    return param


def path_id(name, description=None, maximum=None):
    """A required positive integer in the path."""
    schema = {"type": "integer", "minimum": 1}
    if maximum:
        schema["maximum"] = maximum
    param = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        param["description"] = description
    return param


def token_param(description):
    """`?token=` for clients that cannot send a header."""
    return query_param("token", STR, description)


LIMIT = query_param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "page size")
OFFSET = query_param("offset", {"type": "integer", "minimum": 0, "maximum": 10**12, "default": 0},
                     "rows to skip (newest first)")
IMG_TOKEN = token_param("api_token or viewer_token, for <img> tags that cannot set headers")


def get_op(summary, ok, params=(), op_id=None, public=False, extra=None):
    """A read: 400 when it takes parameters, 401 unless `public`."""
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


def write_op(summary, ok_status, ok, op_id, body=None, params=(), extra=None, body_required=True):
    """An operation that changes state (POST or PUT): admin token, a JSON body when `body` is given."""
    responses = {ok_status: ok, "400": ERR_400, "401": ERR_401, "403": ERR_403}
    responses.update(extra or {})
    op = {"summary": summary, "operationId": op_id, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
        responses["413"] = ERR_413
    return op
