"""GET /api/openapi.json describes every route, and the real daemon's answers match it."""
import re

import pytest
import requests
import schemathesis

from conftest import wait_for

SPEC_ROUTES = {
    ("GET", "/"), ("GET", "/gui"), ("GET", "/static/{path}"), ("GET", "/api/status"), ("POST", "/api/download"),
    ("POST", "/api/batch"), ("GET", "/api/downloads"), ("GET", "/api/downloads/{download_id}"),
    ("POST", "/api/downloads/{download_id}/cancel"), ("POST", "/api/downloads/{download_id}/pause"),
    ("POST", "/api/downloads/{download_id}/resume"), ("POST", "/api/downloads/{download_id}/retry"),
    ("GET", "/api/completed"), ("GET", "/api/metrics"), ("GET", "/api/manifests"), ("GET", "/api/updates"),
    ("POST", "/api/updates/check"), ("GET", "/ws/downloads"), ("GET", "/healthz"), ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon (with an api_token) and its own OpenAPI document."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import DaemonProcess
    from fakeciv import FakeCivitai
    fake = FakeCivitai(tmp_path_factory.mktemp("fake")).start()
    home = tmp_path_factory.mktemp("openapi")
    daemon = DaemonProcess(home, {"civitai_base_url": fake.base_url, "api_token": "doc-token", "workers": 2,
                                  "retries": 0, "backoff": 0.05, "log_level": "DEBUG"}).start()
    doc = daemon.get("/api/openapi.json").json()
    yield daemon, fake, doc
    daemon.stop()
    fake.stop()


def operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def resolve(doc, node):
    """Every $ref in `node` must point at something in the document."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            resolve(doc, target)
        for value in node.values():
            resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            resolve(doc, value)


def test_document_covers_every_route(served):
    daemon, _, doc = served
    assert doc["openapi"].startswith("3.0")
    assert doc["info"]["version"] == daemon.get("/api/status").json()["version"]
    described = {(method, path) for method, path, _ in operations(doc)}
    assert SPEC_ROUTES <= described, SPEC_ROUTES - described
    resolve(doc, doc)
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(doc):
        assert op["responses"], (method, path)
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status) and response["description"], (method, path, status)
        for name in re.findall(r"{(\w+)}", path):
            assert any(p["name"] == name and p["in"] == "path" and p["required"] for p in op["parameters"])
        if path.startswith("/api/"):
            assert "401" in op["responses"], (method, path)
            assert op.get("security") != [], (method, path)
        if method == "POST":
            assert {"400", "401", "403"} <= set(op["responses"]), (method, path)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", **{k: v for k, v in doc["components"]["securitySchemes"]["bearer"].items()
                                               if k == "description"}}


def test_routes_of_the_app_are_all_described(served):
    """A route added to the bottle app without documenting it fails here."""
    from daemon.web.app import WebApp
    from daemon.web import openapi

    class Settings:
        api_token = viewer_token = None

    app = WebApp(Settings(), None, None, None).app
    doc = openapi.document("x")
    described = {(m, p) for m, p, _ in operations(doc)}
    for route in app.routes:
        path = re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", route.rule)
        if path == "/gui/" or path == "/static/bootstrap/{path}":
            continue  # the trailing-slash redirect; Bootstrap files under /static/{path}
        if path == "/api/downloads/{download_id}/{action}":
            assert all((route.method, f"/api/downloads/{{download_id}}/{a}") in described
                       for a in ("cancel", "pause", "resume", "retry"))
            continue
        assert (route.method, path) in described, (route.method, path)


def test_item_schema_matches_the_manifest_fields(served):
    from daemon.manifest import ITEM_FIELDS, MAX_PRIORITY
    _, _, doc = served
    item = doc["components"]["schemas"]["Item"]
    assert set(item["properties"]) == set(ITEM_FIELDS) and item["additionalProperties"] is False
    assert item["properties"]["priority"]["maximum"] == MAX_PRIORITY
    assert item["properties"]["sha256"]["pattern"] == "^[0-9a-fA-F]{64}$"
    download = doc["components"]["schemas"]["Download"]
    assert {"id", "state", "filename", "path", "url", "sha256", "verified", "bytes", "total", "priority",
            "manifest", "modelId", "modelVersionId", "error", "created_at", "finished_at"} <= set(download["required"])


def test_real_answers_match_the_document(served):
    daemon, fake, doc = served
    schema = schemathesis.openapi.from_dict(doc)
    blob = fake.add_blob("documented.bin", size=3000)
    token = {"Authorization": "Bearer doc-token"}

    def check(method, path, template=None, status=None, **kwargs):
        kwargs.setdefault("headers", token)
        response = requests.request(method, daemon.url + path, timeout=10, allow_redirects=False, **kwargs)
        if status is not None:
            assert response.status_code == status, (method, path, response.status_code, response.text[:200])
        operation = schema[template or path.split("?")[0]][method]
        operation.validate_response(response)
        return response

    added = check("POST", "/api/download", json={"url": blob["url"]}, status=202).json()["id"]
    daemon.drop("documented.json", {"items": [{"url": blob["url"], "filename": "copy.bin"}]})
    daemon.result("documented.json", 30)
    wait_for(lambda: daemon.download(added)["state"] == "completed", 20, message="download done")
    check("POST", "/api/batch", json=[{"url": blob["url"] + "?x=1"}], status=202)
    one = "/api/downloads/{download_id}"
    for method, path, template, status in [
        ("GET", "/api/status", None, 200), ("GET", "/api/downloads", None, 200),
        ("GET", "/api/downloads?state=completed&limit=2", None, 200), ("GET", "/api/downloads?limit=abc", None, 400),
        ("GET", f"/api/downloads/{added}", one, 200), ("GET", "/api/downloads/abc", one, 400),
        ("GET", "/api/downloads/424242", one, 404),
        ("GET", "/api/completed", None, 200), ("GET", "/api/metrics", None, 200),
        ("GET", "/api/manifests", None, 200), ("GET", "/api/updates", None, 200),
        ("POST", "/api/updates/check", None, 200),
        ("POST", f"/api/downloads/{added}/resume", one + "/resume", 409),
        ("POST", "/api/downloads/424242/cancel", one + "/cancel", 404),
        ("GET", "/api/openapi.json", None, 200), ("GET", "/healthz", None, 200), ("GET", "/metrics", None, 200),
        ("GET", "/", None, 302), ("GET", "/gui", None, 200), ("GET", "/ws/downloads", None, 400),
        ("GET", "/static/client.js", "/static/{path}", 200),
    ]:
        check(method, path, template, status)
    check("POST", "/api/download", json={"url": 5}, status=400)
    check("POST", "/api/batch", data=b"{", status=400)
    check("GET", "/api/status", headers={}, status=401)
    check("POST", "/api/download", headers={}, json={"url": blob["url"]}, status=401)
